"""Rotary position embedding applied to q and k, in the NeoX / Hugging Face "rotate_half" layout.

Each head vector of size D is split into two halves (x1, x2) that rotate as pairs (x1[i], x2[i]);
this is the layout Llama, Qwen and Mistral checkpoints on the Hugging Face hub use.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _rotate_half(x: Tensor) -> Tensor:
    """Map (x1, x2) to (-x2, x1) along the last dimension."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary_ref(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate q [T, Hq, D] and k [T, Hk, D] by per-token cos/sin [T, D]; pure-torch reference.

    Like transformers, cos/sin are cast to each input's dtype first and the products are taken in that
    dtype, so bf16 inputs round exactly as the Hugging Face models do.
    """
    check_rotary_shapes(q, k, cos, sin)
    return _rotate(q, cos, sin), _rotate(k, cos, sin)


def apply_rotary_fp32_ref(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate q [T, Hq, D] and k [T, Hk, D] in float32, each result rounded once to its input's dtype.

    The vision towers' rounding (transformers' apply_rotary_pos_emb_vision): their positions reach the
    hundreds, where angles and products in bf16 would drift.
    """
    check_rotary_shapes(q, k, cos, sin)
    cos, sin = cos.float(), sin.float()
    return _rotate(q.float(), cos, sin).to(q.dtype), _rotate(k.float(), cos, sin).to(k.dtype)


def check_rotary_shapes(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> None:
    """Raise ValueError unless q/k are [T, H, D] and cos/sin [T, D]: one message for every rotary version."""
    if cos.shape != sin.shape or cos.dim() != 2:
        raise ValueError(f"cos and sin must both be [T, D], got {tuple(cos.shape)} and {tuple(sin.shape)}")
    for name, x in (("q", q), ("k", k)):
        if x.dim() != 3 or x.shape[0] != cos.shape[0] or x.shape[-1] != cos.shape[-1]:
            raise ValueError(f"{name} must be [T, H, D] with T, D = {tuple(cos.shape)}, got {tuple(x.shape)}")


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Apply x * cos + rotate_half(x) * sin with cos/sin broadcast over the head dimension."""
    cos = cos.to(x.dtype).unsqueeze(1)
    sin = sin.to(x.dtype).unsqueeze(1)
    return x * cos + _rotate_half(x) * sin
