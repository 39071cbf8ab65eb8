"""Rotary embedding (rotate-half layout) in Triton: one program per token rotates all its q and k heads."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from forgellm.kernels.rotary import check_rotary_shapes
from forgellm.kernels.triton_utils import next_power_of_2


@triton.jit
def load_cos_sin(cos_ptr, sin_ptr, t, stride_ct, stride_st, half, HALF: tl.constexpr):
    """Token t's cos/sin halves (c1, c2, s1, s2) as [1, HALF] fp32; loaded once, shared by all heads."""
    cols = tl.arange(0, HALF)[None, :]
    cmask = cols < half
    c1 = tl.load(cos_ptr + t * stride_ct + cols, mask=cmask, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + t * stride_ct + half + cols, mask=cmask, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + t * stride_st + cols, mask=cmask, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + t * stride_st + half + cols, mask=cmask, other=0.0).to(tl.float32)
    return c1, c2, s1, s2


@triton.jit
def load_halves(x_ptr, stride_xh, num_heads, half, H_PAD: tl.constexpr, HALF: tl.constexpr):
    """The two halves [H_PAD, HALF] of every head at x_ptr, and their mask."""
    heads = tl.arange(0, H_PAD)[:, None]
    cols = tl.arange(0, HALF)[None, :]
    mask = (heads < num_heads) & (cols < half)
    x1 = tl.load(x_ptr + heads * stride_xh + cols, mask=mask, other=0.0)
    x2 = tl.load(x_ptr + heads * stride_xh + half + cols, mask=mask, other=0.0)
    return x1, x2, mask


@triton.jit
def rotate_heads(x_ptr, stride_xh, num_heads, c1, c2, s1, s2, half, H_PAD: tl.constexpr, HALF: tl.constexpr):
    """Rotated halves (lo, hi) of [num_heads, 2*half] at x_ptr in x's dtype, and their [H_PAD, HALF] mask.

    Shared with triton_rotary_kv so both kernels round exactly like the reference.
    """
    x1, x2, mask = load_halves(x_ptr, stride_xh, num_heads, half, H_PAD, HALF)
    dt = x1.dtype
    # Like the reference: cos/sin cast to x's dtype, each product and the sum rounded to it.
    c1, c2 = c1.to(dt).to(tl.float32), c2.to(dt).to(tl.float32)
    s1, s2 = s1.to(dt).to(tl.float32), s2.to(dt).to(tl.float32)
    x1f, x2f = x1.to(tl.float32), x2.to(tl.float32)
    a = (x1f * c1).to(dt).to(tl.float32)
    b = (-x2f * s1).to(dt).to(tl.float32)
    c = (x2f * c2).to(dt).to(tl.float32)
    d = (x1f * s2).to(dt).to(tl.float32)
    return (a + b).to(dt), (c + d).to(dt), mask


@triton.jit
def rotate_heads_fp32(x_ptr, stride_xh, num_heads, c1, c2, s1, s2, half, H_PAD: tl.constexpr, HALF: tl.constexpr):
    """As rotate_heads, but all in float32 and rounded once at the end (apply_rotary_fp32_ref)."""
    x1, x2, mask = load_halves(x_ptr, stride_xh, num_heads, half, H_PAD, HALF)
    dt = x1.dtype
    x1f, x2f = x1.to(tl.float32), x2.to(tl.float32)
    return (x1f * c1 + (-x2f) * s1).to(dt), (x2f * c2 + x1f * s2).to(dt), mask


@triton.jit
def _rotate_heads(
    x_ptr, out_ptr, stride_xh, num_heads, c1, c2, s1, s2, half,
    H_PAD: tl.constexpr, HALF: tl.constexpr, FP32_MATH: tl.constexpr,
):  # fmt: skip
    """Rotate [num_heads, 2*half] at x_ptr into contiguous out_ptr."""
    if FP32_MATH:
        lo, hi, mask = rotate_heads_fp32(x_ptr, stride_xh, num_heads, c1, c2, s1, s2, half, H_PAD, HALF)
    else:
        lo, hi, mask = rotate_heads(x_ptr, stride_xh, num_heads, c1, c2, s1, s2, half, H_PAD, HALF)
    out = out_ptr + tl.arange(0, H_PAD)[:, None] * (2 * half) + tl.arange(0, HALF)[None, :]
    tl.store(out, lo, mask=mask)
    tl.store(out + half, hi, mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr,
    k_ptr,
    cos_ptr,
    sin_ptr,
    q_out_ptr,
    k_out_ptr,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_ct,
    stride_st,
    num_q_heads,
    num_k_heads,
    half,
    HQ_PAD: tl.constexpr,
    HK_PAD: tl.constexpr,
    HALF: tl.constexpr,
    FP32_MATH: tl.constexpr,
):
    """Token t: load its cos/sin once, rotate every q head and every k head."""
    t = tl.program_id(0).to(tl.int64)
    c1, c2, s1, s2 = load_cos_sin(cos_ptr, sin_ptr, t, stride_ct, stride_st, half, HALF)
    _rotate_heads(
        q_ptr + t * stride_qt, q_out_ptr + t * num_q_heads * 2 * half, stride_qh, num_q_heads, c1, c2, s1, s2, half,
        HQ_PAD, HALF, FP32_MATH,
    )  # fmt: skip
    _rotate_heads(
        k_ptr + t * stride_kt, k_out_ptr + t * num_k_heads * 2 * half, stride_kh, num_k_heads, c1, c2, s1, s2, half,
        HK_PAD, HALF, FP32_MATH,
    )  # fmt: skip


def apply_rotary_triton(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton apply_rotary: same contract as forgellm.kernels.rotary.apply_rotary_ref (new contiguous outputs)."""
    return _apply_rotary(q, k, cos, sin, fp32_math=False)


def apply_rotary_fp32_triton(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton apply_rotary_fp32: same contract as forgellm.kernels.rotary.apply_rotary_fp32_ref."""
    return _apply_rotary(q, k, cos, sin, fp32_math=True)


def _apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, fp32_math: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    check_rotary_shapes(q, k, cos, sin)
    if q.shape[-1] % 2:
        raise ValueError(f"rotary needs an even head_dim, got {q.shape[-1]}")
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    cos = cos if cos.stride(-1) == 1 else cos.contiguous()
    sin = sin if sin.stride(-1) == 1 else sin.contiguous()
    q_out, k_out = (
        torch.empty(q.shape, dtype=q.dtype, device=q.device),
        torch.empty(k.shape, dtype=k.dtype, device=k.device),
    )
    num_tokens, half = q.shape[0], q.shape[-1] // 2
    if num_tokens == 0:
        return q_out, k_out
    hq_pad, hk_pad, half_pad = next_power_of_2(q.shape[1]), next_power_of_2(k.shape[1]), next_power_of_2(half)
    _rotary_kernel[(num_tokens,)](
        q,
        k,
        cos,
        sin,
        q_out,
        k_out,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        cos.stride(0),
        sin.stride(0),
        q.shape[1],
        k.shape[1],
        half,
        HQ_PAD=hq_pad,
        HK_PAD=hk_pad,
        HALF=half_pad,
        FP32_MATH=fp32_math,
        num_warps=4 if hq_pad * half_pad >= 1024 else 1,
        # No mul+add -> FMA contraction: each product must round to x's dtype as in the reference.
        enable_fp_fusion=False,
    )
    return q_out, k_out
