"""Rotary embedding of q and k fused with the paged KV-cache write: the pure-torch reference.

A decode step used to launch apply_rotary and then write_kv_cache in every layer; the fused op does
both in one launch (forgellm/kernels/triton_rotary_kv.py). The reference is literally the two
reference ops in sequence, so the fused Triton kernel is checked against exactly what it replaces.
"""

from __future__ import annotations

import torch

from forgellm.kernels.kv_cache import write_kv_cache_ref
from forgellm.kernels.rotary import apply_rotary_ref


def rotary_and_write_kv_ref(
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
    """Return rotated q as a new [T, Hq, D] tensor; store rotated k and unrotated v at slot_mapping (-1: skip).

    q, k and v are left unmodified. The rotated k is not returned: paged attention reads every
    position's K, this step's included, from the cache. An fp8 cache stores them scaled by
    1 / k_scale and 1 / v_scale as write_kv_cache_ref does (k rounded to k's dtype first).
    """
    q_rot, k_rot = apply_rotary_ref(q, k, cos, sin)
    write_kv_cache_ref(k_rot, v, k_cache, v_cache, slot_mapping, k_scale=k_scale, v_scale=v_scale)
    return q_rot
