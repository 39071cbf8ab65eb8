"""SiLU-and-mul in Triton: out = silu(gate) * up for x = [gate | up] along the last dim."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from forgellm.kernels.triton_utils import next_power_of_2


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, n_cols, BLOCK: tl.constexpr):
    """One program per (row, column block); roundings follow torch's two separate ops."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + n_cols + cols, mask=mask, other=0.0)
    # F.silu rounds to the input dtype before the multiply; do the same so bf16 matches exactly.
    act = (gate / (1.0 + tl.exp(-gate))).to(up.dtype).to(tl.float32)
    tl.store(out_ptr + row * n_cols + cols, (act * up.to(tl.float32)).to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul_triton(x: torch.Tensor) -> torch.Tensor:
    """Triton silu_and_mul: same contract as forgellm.kernels.activation.silu_and_mul_ref."""
    if x.shape[-1] % 2:
        raise ValueError(f"last dim must be even ([gate | up]), got {x.shape[-1]}")
    half = x.shape[-1] // 2
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty((*x.shape[:-1], half), dtype=x.dtype, device=x.device)
    rows = x2.shape[0]
    if rows == 0 or half == 0:
        return out
    block = min(next_power_of_2(half), 1024)
    _silu_and_mul_kernel[(rows, triton.cdiv(half, block))](
        x2, out, x2.stride(0), half, BLOCK=block, num_warps=4 if block >= 512 else 1
    )
    return out
