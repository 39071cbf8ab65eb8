"""Rotary embedding + paged KV-cache write in one Triton launch: one program per token.

Fusing saves a kernel (a CUDA-graph node and its launch gap) per layer per step. The rotation is
triton_rotary's own helper, so q and k round exactly as apply_rotary_triton rounds them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from forgellm.kernels.rotary import check_rotary_shapes
from forgellm.kernels.triton_kv_cache import check_cache_layout, inverse_scales, kernel_caches, to_cache
from forgellm.kernels.triton_rotary import load_cos_sin, rotate_heads
from forgellm.kernels.triton_utils import interpreting, next_power_of_2


@triton.jit
def _rotary_kv_kernel(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, q_out_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ct, stride_st,
    stride_kc_slot, stride_kc_h, stride_vc_slot, stride_vc_h, k_inv_scale, v_inv_scale,
    num_q_heads, num_kv_heads, half,
    HQ_PAD: tl.constexpr, HKV_PAD: tl.constexpr, HALF: tl.constexpr,
    KV_FP8: tl.constexpr, SOFTWARE_ROUND: tl.constexpr,
):  # fmt: skip
    """Token t: rotate its q heads into q_out; unless its slot is padding (< 0), store rotated k and v there."""
    t = tl.program_id(0).to(tl.int64)
    c1, c2, s1, s2 = load_cos_sin(cos_ptr, sin_ptr, t, stride_ct, stride_st, half, HALF)
    cols = tl.arange(0, HALF)[None, :]
    # q of padding tokens is rotated too: the reference rotates every row.
    lo, hi, mask = rotate_heads(q_ptr + t * stride_qt, stride_qh, num_q_heads, c1, c2, s1, s2, half, HQ_PAD, HALF)
    q_out = q_out_ptr + t * num_q_heads * 2 * half + tl.arange(0, HQ_PAD)[:, None] * (2 * half) + cols
    tl.store(q_out, lo, mask=mask)
    tl.store(q_out + half, hi, mask=mask)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot >= 0:
        heads = tl.arange(0, HKV_PAD)[:, None]
        # New names: a then-block may not rebind q's lo/hi/mask to k's (differently shaped) values.
        k_lo, k_hi, k_mask = rotate_heads(
            k_ptr + t * stride_kt, stride_kh, num_kv_heads, c1, c2, s1, s2, half, HKV_PAD, HALF
        )
        kc = k_cache_ptr + slot * stride_kc_slot + heads * stride_kc_h + cols
        # An fp8 cache quantizes the rotated k after its rounding to k's dtype, as the reference does.
        kc_ty = k_cache_ptr.dtype.element_ty
        tl.store(kc, to_cache(k_lo, k_inv_scale, kc_ty, KV_FP8, SOFTWARE_ROUND), mask=k_mask)
        tl.store(kc + half, to_cache(k_hi, k_inv_scale, kc_ty, KV_FP8, SOFTWARE_ROUND), mask=k_mask)
        # v is copied whole: [HKV_PAD, 2 * HALF] covers head_dim since next_power_of_2(2h) = 2 * next_power_of_2(h).
        d = tl.arange(0, 2 * HALF)[None, :]
        vmask = (heads < num_kv_heads) & (d < 2 * half)
        v = tl.load(v_ptr + t * stride_vt + heads * stride_vh + d, mask=vmask)
        vc = v_cache_ptr + slot * stride_vc_slot + heads * stride_vc_h + d
        tl.store(vc, to_cache(v, v_inv_scale, v_cache_ptr.dtype.element_ty, KV_FP8, SOFTWARE_ROUND), mask=vmask)


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    """x itself when its last dim is unit-stride (fused-QKV views are), else a contiguous copy."""
    return x if x.stride(-1) == 1 else x.contiguous()


def rotary_and_write_kv_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """Same contract as forgellm.kernels.rotary_kv.rotary_and_write_kv_ref (q comes back new and contiguous).

    Grid and arguments come from shapes and plain floats only (no host sync), so the launch can be
    captured in a CUDA graph.
    """
    check_rotary_shapes(q, k, cos, sin)
    num_tokens, num_kv_heads, head_dim = k.shape
    if head_dim % 2:
        raise ValueError(f"rotary needs an even head_dim, got {head_dim}")
    if v.shape != k.shape:
        raise ValueError(f"v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}")
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if c.dim() != 4 or tuple(c.shape[2:]) != (num_kv_heads, head_dim):
            raise ValueError(f"{name} must be [blocks, block_size, {num_kv_heads}, {head_dim}], got {tuple(c.shape)}")
    if tuple(slot_mapping.shape) != (num_tokens,):
        raise ValueError(f"slot_mapping must be [{num_tokens}], got {tuple(slot_mapping.shape)}")
    check_cache_layout(k_cache, v_cache)
    k_cache, v_cache, fp8 = kernel_caches(k_cache, v_cache)
    q, k, v, cos, sin = (_last_dim_contiguous(x) for x in (q, k, v, cos, sin))
    slot_mapping = slot_mapping.contiguous()
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if num_tokens == 0:
        return q_out
    hq_pad, hkv_pad, half_pad = (
        next_power_of_2(q.shape[1]),
        next_power_of_2(num_kv_heads),
        next_power_of_2(head_dim // 2),
    )
    _rotary_kv_kernel[(num_tokens,)](
        q, k, v, cos, sin, q_out, k_cache, v_cache, slot_mapping,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos.stride(0), sin.stride(0),
        k_cache.stride(1), k_cache.stride(2), v_cache.stride(1), v_cache.stride(2),
        *inverse_scales(fp8, k_scale, v_scale),
        q.shape[1], num_kv_heads, head_dim // 2,
        HQ_PAD=hq_pad, HKV_PAD=hkv_pad, HALF=half_pad, KV_FP8=fp8, SOFTWARE_ROUND=fp8 and interpreting(),
        num_warps=4 if hq_pad * half_pad >= 1024 else 1,
        # No mul+add -> FMA contraction: each product must round to x's dtype as in the reference.
        enable_fp_fusion=False,
    )  # fmt: skip
    return q_out
