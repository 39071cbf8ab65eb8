"""FP8 W8A8 matmul: the pure-torch reference (dequantize both operands, multiply in float32).

Layouts: x_q [M, K] e4m3 with x_scale 0-d or [1] (static per tensor), [M, 1] (per token) or
[M, ceil(K/bk)] (per token group of bk = block[1] columns, aligned with the weight's K blocks);
w [N, K] e4m3 with w_scale 0-d or [1] (per tensor), [N, 1] (per channel) or
[ceil(N/bn), ceil(K/bk)] (per (bn, bk) block). The layout of each scale is read from its shape.
"""

from __future__ import annotations

import torch

from forgellm.kernels.fp8_quant import dequantize_fp8


def fp8_matmul_ref(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
    block: tuple[int, int] = (128, 128),
    split_k_counters: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = (x_q * x_scale) @ (w * w_scale)^T (+ bias), in float32, returned in out_dtype: [M, N].

    split_k_counters: for the Triton version (the dispatched op passes the same call to both); unused here."""
    x = dequantize_fp8(x_q, x_scale, (1, block[1]))
    y = x @ dequantize_fp8(w, w_scale, block).t()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)
