"""Independent pure-torch quantize-dequantize of dense weights and activations, written from the
scheme definitions (not forgellm's code), to build float32 transformers references."""

from __future__ import annotations

import torch

FP8_MAX = 448.0
E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def rtn_int(w: torch.Tensor, bits: int, group: int | None) -> torch.Tensor:
    """Symmetric round-to-nearest: scale = amax / (2^(bits-1) - 1) per group of inputs."""
    n, k = w.shape
    g = group or k
    wg = w.reshape(n, k // g, g)
    qmax = 2 ** (bits - 1) - 1
    scale = wg.abs().amax(-1, keepdim=True) / qmax
    return (torch.clamp(torch.round(wg / scale), -qmax - 1, qmax) * scale).reshape(n, k)


def fp8_channel(w: torch.Tensor) -> torch.Tensor:
    scale = w.abs().amax(1, keepdim=True) / FP8_MAX
    return (w / scale).to(torch.float8_e4m3fn).float() * scale


def fp8_token(x: torch.Tensor) -> torch.Tensor:
    scale = (x.abs().amax(-1, keepdim=True) / FP8_MAX).clamp_min(1e-12)
    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * scale


def nvfp4(w: torch.Tensor) -> torch.Tensor:
    """Global scale amax/(6*448), an e4m3 scale per 16 inputs, values the nearest e2m1 number."""
    n, k = w.shape
    global_scale = w.abs().amax() / (6 * FP8_MAX)
    wg = w.reshape(n, k // 16, 16)
    block = (wg.abs().amax(-1, keepdim=True) / 6 / global_scale).to(torch.float8_e4m3fn).float() * global_scale
    scaled = wg / block
    nearest = E2M1[(scaled.abs().unsqueeze(-1) - E2M1).abs().argmin(-1)]
    return (torch.sign(scaled) * nearest * block).reshape(n, k)
