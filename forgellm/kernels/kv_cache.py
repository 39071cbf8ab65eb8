"""Writing new K/V into the paged cache: pure-torch reference, and the FP8 (e4m3) cache format.

A cache of dtype float8_e4m3fn holds K (and V) divided by a per-tensor scale, clamped to e4m3's
finite range and rounded to nearest even; reading it back multiplies by the scale. Any other cache
dtype holds the values themselves and the scales are ignored. Every version (reference and Triton)
divides as x * float32(1 / scale), one rounding that torch on CPU, torch on CUDA and Triton all
share, so the stored bytes agree bit for bit wherever the op runs.
"""

from __future__ import annotations

import torch

FP8_KV_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value: larger magnitudes saturate rather than become NaN


def is_fp8_cache(cache: torch.Tensor) -> bool:
    """True when `cache` holds scaled e4m3 values (the scales apply), False for a plain float cache."""
    return cache.dtype == FP8_KV_DTYPE


def quantize_kv_ref(x: torch.Tensor, cache_dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    """x as a cache of `cache_dtype` stores it: clamp(x / scale, ±448) in e4m3, or plainly converted."""
    if cache_dtype != FP8_KV_DTYPE:
        return x.to(cache_dtype)
    return (x.float() * (1.0 / scale)).clamp(-FP8_MAX, FP8_MAX).to(cache_dtype)


def dequantize_kv_ref(cached: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Cached K or V back as float32: e4m3 values times their scale; a plain cache's values as they are."""
    if cached.dtype != FP8_KV_DTYPE:
        return cached.float()
    return cached.float() * scale


def write_kv_cache_ref(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """Store k/v [T, H, D] at flat slots (block * block_size + offset); slot -1 marks padding.

    An fp8 cache stores k / k_scale and v / v_scale (see the module docstring); others ignore the scales.
    """
    valid = slot_mapping >= 0
    slots = slot_mapping[valid]
    k_cache.view(-1, *k_cache.shape[2:])[slots] = quantize_kv_ref(k[valid], k_cache.dtype, k_scale)
    v_cache.view(-1, *v_cache.shape[2:])[slots] = quantize_kv_ref(v[valid], v_cache.dtype, v_scale)
