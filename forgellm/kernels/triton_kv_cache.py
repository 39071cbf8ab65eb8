"""Writing new K/V into the paged cache in Triton: one program per token, slot -1 skipped.

Also the FP8 (e4m3) cache format's Triton side, shared by every kernel that writes or reads the
cache: fp8 caches are passed to kernels as uint8 views and bitcast inside (the CPU interpreter
cannot load fp8 with a fill value), and a constexpr flag picks the fp8 code so that a bf16 cache
compiles to exactly the code it had before fp8 existed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from forgellm.kernels.kv_cache import FP8_MAX, is_fp8_cache
from forgellm.kernels.triton_utils import interpreting, next_power_of_2

_FP8_MAX = tl.constexpr(FP8_MAX)


@triton.jit
def _round_to_e4m3(y):
    """y (float32, |y| <= 448) rounded to nearest even at e4m3's precision, still float32.

    Only for the CPU interpreter, whose float -> fp8 cast truncates ties and drops mantissa carries:
    adding m = 2**(max(exponent, -6) + 20) leaves float32 exactly 3 fraction bits of |y| (fixed 2**-9
    steps in e4m3's subnormal range), and its own round-to-nearest-even rounds the rest away.
    """
    a = tl.abs(y)
    e = tl.maximum(a.to(tl.int32, bitcast=True) >> 23, 127 - 6)
    m = ((e + 20) << 23).to(tl.float32, bitcast=True)
    r = (a + m) - m
    # y's sign back by a product (Triton's -r is 0 - r, which loses it on zero): -0.0 and negatives
    # that round to zero stay negative zeros, as torch's cast keeps them.
    return r * tl.where(y.to(tl.int32, bitcast=True) < 0, -1.0, 1.0)


@triton.jit
def to_cache(x, inv_scale, cache_ty: tl.constexpr, KV_FP8: tl.constexpr, SOFTWARE_ROUND: tl.constexpr):
    """x as the cache stores it: e4m3 bits (as uint8) of clamp(x * inv_scale, ±448) when KV_FP8, else x in cache_ty."""
    if KV_FP8:
        y = x.to(tl.float32) * inv_scale
        y = tl.minimum(tl.maximum(y, -_FP8_MAX), _FP8_MAX)
        if SOFTWARE_ROUND:
            y = _round_to_e4m3(y)
        out = y.to(tl.float8e4nv).to(tl.uint8, bitcast=True)  # the GPU's cast: round to nearest even
    else:
        out = x.to(cache_ty)
    return out


def kernel_caches(k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The caches as kernels take them (fp8 ones as uint8 views, same strides) and whether they are fp8."""
    fp8 = is_fp8_cache(k_cache)
    if fp8 != is_fp8_cache(v_cache):
        raise ValueError(f"K and V caches must both be fp8 or neither, got {k_cache.dtype} and {v_cache.dtype}")
    if fp8:
        return k_cache.view(torch.uint8), v_cache.view(torch.uint8), True
    return k_cache, v_cache, False


def inverse_scales(fp8: bool, k_scale: float, v_scale: float) -> tuple[float, float]:
    """What the cache-writing kernels multiply K and V by: 1 / scale for an fp8 cache; unused (1.0) otherwise."""
    return (1.0 / k_scale, 1.0 / v_scale) if fp8 else (1.0, 1.0)


@triton.jit
def _write_kv_kernel(
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_ptr,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_kc_slot,
    stride_kc_h,
    stride_vc_slot,
    stride_vc_h,
    k_inv_scale,
    v_inv_scale,
    num_heads,
    head_dim,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK: tl.constexpr,
    KV_FP8: tl.constexpr,
    SOFTWARE_ROUND: tl.constexpr,
):
    """Copy token t's K and V (all heads) to its flat cache slot; padding tokens (slot < 0) do nothing."""
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot < 0:
        return
    offs = tl.arange(0, BLOCK)
    # Heads are laid out at a power-of-two pitch so the split into (head, d) is a shift and a mask.
    head, d = offs // HEAD_DIM_PAD, offs % HEAD_DIM_PAD
    mask = (head < num_heads) & (d < head_dim)
    k = tl.load(k_ptr + t * stride_kt + head * stride_kh + d, mask=mask)
    v = tl.load(v_ptr + t * stride_vt + head * stride_vh + d, mask=mask)
    kc = k_cache_ptr + slot * stride_kc_slot + head * stride_kc_h + d
    vc = v_cache_ptr + slot * stride_vc_slot + head * stride_vc_h + d
    tl.store(kc, to_cache(k, k_inv_scale, k_cache_ptr.dtype.element_ty, KV_FP8, SOFTWARE_ROUND), mask=mask)
    tl.store(vc, to_cache(v, v_inv_scale, v_cache_ptr.dtype.element_ty, KV_FP8, SOFTWARE_ROUND), mask=mask)


def check_cache_layout(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    """Raise ValueError unless both caches can be addressed by flat slot, as the cache-writing kernels do."""
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if c.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dim")
        # Flat slot s = block * block_size + offset addresses [blocks, block_size] as one dim; that needs
        # the block stride to be block_size times the slot stride (true of any contiguous cache).
        if c.stride(0) != c.shape[1] * c.stride(1):
            raise ValueError(f"{name} blocks must be contiguous over their slots")


def write_kv_cache_triton(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """Triton write_kv_cache: same contract as forgellm.kernels.kv_cache.write_kv_cache_ref.

    The scales are plain floats, so a CUDA graph captures them as constants.
    """
    num_tokens, num_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    for name, t in (("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dim")
    check_cache_layout(k_cache, v_cache)
    k_cache, v_cache, fp8 = kernel_caches(k_cache, v_cache)
    block = next_power_of_2(num_heads * next_power_of_2(head_dim))
    _write_kv_kernel[(num_tokens,)](
        k,
        v,
        k_cache,
        v_cache,
        slot_mapping,
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(1),
        v_cache.stride(2),
        *inverse_scales(fp8, k_scale, v_scale),
        num_heads,
        head_dim,
        HEAD_DIM_PAD=next_power_of_2(head_dim),
        BLOCK=block,
        KV_FP8=fp8,
        SOFTWARE_ROUND=fp8 and interpreting(),
        num_warps=4 if block >= 512 else 1,
    )
