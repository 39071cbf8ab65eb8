"""FP8 (e4m3) quantization: pure-torch references for activations (dynamic per token, dynamic per
token group, static per tensor) and the load-time weight quantizer and dequantizer.

Scales multiply: x ~= x_q.float() * x_scale. Activation scales are amax / 448, clamped below at
FP8_MIN_SCALE so an all-zero row quantizes to zeros instead of 0/0.
"""

from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
# Only rows whose amax is below 448e-12 feel the clamp; those are zeros in any real activation.
FP8_MIN_SCALE = 1e-12
# Activation scales are amax times this float32 reciprocal, not amax / 448: torch on CUDA divides a tensor by
# a scalar that way, so CPU, CUDA and Triton all give the same scale bits.
FP8_INV_MAX = 1.0 / FP8_MAX
WEIGHT_STRATEGIES = ("tensor", "channel", "block")


def _to_fp8(scaled: torch.Tensor) -> torch.Tensor:
    """Saturate to +-448 and round to nearest even e4m3 (torch's cast does not saturate: it makes NaN)."""
    return scaled.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def _group_amax(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """amax over consecutive groups of the last dim (the last group may be short), in float32."""
    k = x.shape[-1]
    groups = -(-k // group_size)
    padded = torch.nn.functional.pad(x.float().abs(), (0, groups * group_size - k))
    return padded.view(*x.shape[:-1], groups, group_size).amax(dim=-1)


def quantize_fp8_per_token_group_ref(x: torch.Tensor, group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-group quantization of x [..., K]: (x_q [..., K] fp8, x_scale [..., ceil(K/group)] f32)."""
    scale = (_group_amax(x, group_size) * FP8_INV_MAX).clamp_min(FP8_MIN_SCALE)
    expanded = scale.repeat_interleave(group_size, dim=-1)[..., : x.shape[-1]]
    return _to_fp8(x.float() / expanded), scale


def quantize_fp8_per_token_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token quantization of x [..., K]: (x_q [..., K] fp8, x_scale [..., 1] float32)."""
    scale = (x.float().abs().amax(dim=-1, keepdim=True) * FP8_INV_MAX).clamp_min(FP8_MIN_SCALE)
    return _to_fp8(x.float() / scale), scale


def quantize_fp8_static_ref(x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Static per-tensor quantization with a checkpoint's input_scale: (x_q fp8, the scale as 0-d f32)."""
    scale = scale.to(device=x.device, dtype=torch.float32).reshape(())
    return _to_fp8(x.float() / scale), scale


def quantize_fp8_weight(
    w: torch.Tensor, strategy: str, block: tuple[int, int] = (128, 128)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a [N, K] weight to e4m3 (round to nearest): (w_fp8, w_scale) in the layouts of fp8_matmul.

    strategy "tensor" gives a 0-d scale, "channel" [N, 1], "block" [ceil(N/bn), ceil(K/bk)].
    """
    if w.dim() != 2:
        raise ValueError(f"weight must be [N, K], got shape {tuple(w.shape)}")
    wf = w.float()
    if strategy == "tensor":
        scale = wf.abs().amax() / FP8_MAX
    elif strategy == "channel":
        scale = wf.abs().amax(dim=1, keepdim=True) / FP8_MAX
    elif strategy == "block":
        bn, bk = block
        rows = _group_amax(wf, bk)  # [N, ceil(K/bk)]
        scale = _group_amax(rows.t(), bn).t() / FP8_MAX  # amax over bn consecutive rows of each column block
    else:
        raise ValueError(f"weight strategy must be one of {WEIGHT_STRATEGIES}, got {strategy!r}")
    scale = scale.clamp_min(FP8_MIN_SCALE).contiguous()
    return _to_fp8(wf / expand_scale(scale, w.shape, block)), scale


def expand_scale(scale: torch.Tensor, shape: torch.Size | tuple[int, int], block: tuple[int, int]) -> torch.Tensor:
    """Broadcast a scale to a [R, C] tensor: one value, one per row [R, 1], or one per (bn, bk) block."""
    rows, cols = shape
    if scale.numel() == 1:
        return scale.float().reshape(1, 1).expand(rows, cols)
    if scale.dim() == 2 and scale.shape == (rows, 1):
        return scale.float().expand(rows, cols)
    bn, bk = block
    if scale.dim() != 2 or scale.shape != (-(-rows // bn), -(-cols // bk)):
        raise ValueError(f"scale of shape {tuple(scale.shape)} fits no layout of a {rows}x{cols} tensor")
    return scale.float().repeat_interleave(bn, 0)[:rows].repeat_interleave(bk, 1)[:, :cols]


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] = (128, 128)) -> torch.Tensor:
    """float32 q * scale for a 2-D q, the scale's layout read from its shape (see expand_scale)."""
    return q.float() * expand_scale(scale, q.shape, block)
