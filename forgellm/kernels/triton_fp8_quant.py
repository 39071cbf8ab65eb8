"""FP8 (e4m3) activation quantization in Triton: one program per row, the row viewed as
[groups, group] so per-token (one group of the whole row), per-group and static scaling share a kernel.

Same roundings as forgellm.kernels.fp8_quant: IEEE division (div_rn), saturation at +-448, then
round to nearest even, so results match the reference bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from forgellm.kernels.fp8_quant import FP8_DTYPE
from forgellm.kernels.fp8_quant import FP8_INV_MAX as _FP8_INV_MAX
from forgellm.kernels.fp8_quant import FP8_MAX as _FP8_MAX
from forgellm.kernels.fp8_quant import FP8_MIN_SCALE as _FP8_MIN_SCALE
from forgellm.kernels.triton_utils import interpreting, next_power_of_2

# Compiled kernels may read module globals only when they are constexpr (the interpreter is laxer).
FP8_MAX = tl.constexpr(_FP8_MAX)
FP8_INV_MAX = tl.constexpr(_FP8_INV_MAX)
FP8_MIN_SCALE = tl.constexpr(_FP8_MIN_SCALE)


@triton.jit
def _round_to_e4m3_grid(v):
    """Round float32 v (|v| <= 448) to the nearest even e4m3 value, still in float32.

    Only for the interpreter, whose float32 -> fp8 cast mis-rounds (a carry out of the mantissa is
    lost: 127.99 becomes 64); GPUs convert with cvt.rn.satfinite, already round-to-nearest-even.
    """
    bits = v.to(tl.int32, bitcast=True)
    # Normal e4m3 numbers keep 3 of float32's 23 mantissa bits: add half an ulp (ties to even), cut.
    lsb = (bits >> 20) & 1
    normal = ((bits + 0x7FFFF + lsb) & -1048576).to(tl.float32, bitcast=True)
    # Below 2^-6 e4m3 is subnormal with a fixed step of 2^-9; adding 1.5 * 2^14 (ulp 2^-9) rounds to it.
    # Rounded as a magnitude, then the sign bit put back (so tiny negatives give -0 like a real cast).
    magnitude = ((tl.abs(v) + 24576.0) - 24576.0).to(tl.int32, bitcast=True)
    subnormal = (magnitude | (bits & -2147483648)).to(tl.float32, bitcast=True)
    return tl.where(tl.abs(v) < 0.015625, subnormal, normal)


@triton.jit
def _quant_kernel(
    x_ptr,
    q_ptr,
    s_ptr,
    stride_x,
    k,
    group_size,
    num_groups,
    STATIC: tl.constexpr,
    GROUPS: tl.constexpr,
    GROUP: tl.constexpr,
    ROUND_ON_GRID: tl.constexpr,
):
    """Quantize row `program_id(0)` of x; a dynamic scale per group goes to s[row, group]."""
    row = tl.program_id(0).to(tl.int64)
    g = tl.arange(0, GROUPS)[:, None]
    c = tl.arange(0, GROUP)[None, :]
    cols = g * group_size + c
    mask = (c < group_size) & (cols < k)
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if STATIC:
        scale = tl.load(s_ptr)
        v = tl.math.div_rn(x, scale)
    else:
        amax = tl.max(tl.abs(x), axis=1)
        scale = tl.maximum(amax * FP8_INV_MAX, FP8_MIN_SCALE)
        tl.store(s_ptr + row * num_groups + tl.arange(0, GROUPS), scale, mask=tl.arange(0, GROUPS) < num_groups)
        v = tl.math.div_rn(x, scale[:, None])
    v = tl.minimum(tl.maximum(v, -FP8_MAX), FP8_MAX)
    if ROUND_ON_GRID:
        v = _round_to_e4m3_grid(v)
    tl.store(q_ptr + row * k + cols, v.to(q_ptr.dtype.element_ty), mask=mask)


def _quantize(x: torch.Tensor, group_size: int, static_scale: torch.Tensor | None):
    """Launch the kernel over the rows of x [..., K]; returns (x_q, scale) shaped like the references."""
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    rows = x2.shape[0]
    group_size = max(min(group_size, k), 1)
    num_groups = -(-k // group_size)
    q = torch.empty(x.shape, dtype=FP8_DTYPE, device=x.device)
    if static_scale is not None:
        scale = static_scale.to(device=x.device, dtype=torch.float32).reshape(())
    else:
        scale = torch.empty((*x.shape[:-1], num_groups), dtype=torch.float32, device=x.device)
    if rows == 0 or k == 0:
        return q, scale
    groups, group = next_power_of_2(num_groups), next_power_of_2(group_size)
    # ~16 fp32 values per thread, as the 8B rows (4096 and 14336 wide) need 4 to 32 warps.
    num_warps = min(max(groups * group // 512, 1), 32)
    _quant_kernel[(rows,)](
        x2,
        q,
        scale,
        x2.stride(0),
        k,
        group_size,
        num_groups,
        STATIC=static_scale is not None,
        GROUPS=groups,
        GROUP=group,
        ROUND_ON_GRID=interpreting(),
        num_warps=num_warps,
    )
    return q, scale


def quantize_fp8_per_token_triton(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton quantize_fp8_per_token: same contract as fp8_quant.quantize_fp8_per_token_ref."""
    return _quantize(x, x.shape[-1], None)


def quantize_fp8_per_token_group_triton(x: torch.Tensor, group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton quantize_fp8_per_token_group: same contract as fp8_quant.quantize_fp8_per_token_group_ref."""
    return _quantize(x, group_size, None)


def quantize_fp8_static_triton(x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton quantize_fp8_static: same contract as fp8_quant.quantize_fp8_static_ref."""
    return _quantize(x, x.shape[-1], scale)
