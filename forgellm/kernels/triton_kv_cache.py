"""Writing new K/V into the paged cache in Triton: one program per token, slot -1 skipped."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from forgellm.kernels.triton_utils import next_power_of_2


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
    num_heads,
    head_dim,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK: tl.constexpr,
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
    tl.store(kc, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(vc, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


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
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Triton write_kv_cache: same contract as forgellm.kernels.kv_cache.write_kv_cache_ref."""
    num_tokens, num_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    for name, t in (("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dim")
    check_cache_layout(k_cache, v_cache)
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
        num_heads,
        head_dim,
        HEAD_DIM_PAD=next_power_of_2(head_dim),
        BLOCK=block,
        num_warps=4 if block >= 512 else 1,
    )
