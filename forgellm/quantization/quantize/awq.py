"""AWQ scale search (activation-aware weight quantization, Lin et al. 2023) for `forgellm quantize --scheme w4a16-awq`.

Why: a few input channels of an LLM linear carry activations far larger than the rest, and round-to-nearest
quantizes their weights as coarsely as any other. Multiplying those weight columns by s > 1 (and dividing the
input by s, folded into whatever produces it) keeps the float function unchanged but spends relatively more of
each group's 4-bit grid on the salient columns, so the quantized output error drops.

The search follows AutoAWQ and llmcompressor: for ratio r on a grid, s = x_mean**r / w_mean**(1 - r) (duo
scaling) or s = x_mean**r, normalised by sqrt(max * min), and the r with the smallest output error wins. Two
deliberate differences, both for reasons of the runner that calls this:

- The loss is each consumer linear's own output, not the whole module's (attention or MLP): the layer-by-layer
  runner cannot afford module forwards for every grid point. It is the sum over consumers of the mean squared
  error of x @ W^T against (x / s) @ Q(W * s)^T.
- Ratio 0 is exactly s = 1 (AutoAWQ's duo scaling gives 1 / w_mean there), so plain round-to-nearest is always
  a candidate and AWQ is never worse than it on the calibration rows. w_mean normalises |W| per output row
  (the search is not told the quantization group size).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# AutoAWQ's guards: keep w_mean's reciprocal and the scales away from zero and infinity.
_W_MEAN_EPS = 1e-4
_SCALE_MIN = 1e-4
# Rows of x per matmul in the loss: bounds the [rows, N] product (N is 14336 for an 8B model's gate/up).
_LOSS_CHUNK_ROWS = 1024
_MEAN_CHUNK_ROWS = 8192


@dataclass
class AwqSearchResult:
    """The chosen per-input-channel scales and the errors that chose them."""

    scales: torch.Tensor  # float32 [K], > 0: consumers' weight columns are multiplied by it, x divided by it
    ratio: float  # the grid point chosen (0.0 = no scaling)
    loss: float  # mean squared output error at that point
    loss_unscaled: float  # the same error with no scaling (ratio 0), for the log


def _check_inputs(x: torch.Tensor, weights: list[torch.Tensor], grid: int, max_rows: int) -> int:
    """K, or ValueError naming the offending shapes."""
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0 or not x.is_floating_point():
        raise ValueError(f"x must be a non-empty floating [T, K] tensor, got {x.dtype} {tuple(x.shape)}")
    if not weights:
        raise ValueError(f"weights is empty: AWQ needs at least one consumer [N, K] of x {tuple(x.shape)}")
    k = x.shape[1]
    for i, w in enumerate(weights):
        if w.dim() != 2 or w.shape[1] != k or not w.is_floating_point():
            raise ValueError(
                f"weights[{i}] must be floating [N, K={k}] to consume x {tuple(x.shape)}, got {tuple(w.shape)}"
            )
    if grid < 1 or max_rows < 1:
        raise ValueError(f"grid and max_rows must be positive, got grid={grid}, max_rows={max_rows}")
    return k


def _channel_abs_mean(x: torch.Tensor) -> torch.Tensor:
    """mean |x| per channel over all T rows, in float32 chunks (a float32 copy of all of x could be gigabytes)."""
    total = torch.zeros(x.shape[1], dtype=torch.float32, device=x.device)
    for start in range(0, x.shape[0], _MEAN_CHUNK_ROWS):
        total += x[start : start + _MEAN_CHUNK_ROWS].float().abs().sum(0)
    return total / x.shape[0]


def _weight_abs_mean(weights: list[torch.Tensor]) -> torch.Tensor:
    """mean over all consumers' rows of |W| / row max: how large each input column is within its row."""
    total = torch.zeros(weights[0].shape[1], dtype=torch.float32, device=weights[0].device)
    rows = 0
    for w in weights:
        a = w.abs()
        total += (a / (a.amax(dim=1, keepdim=True) + 1e-6)).sum(0)
        rows += w.shape[0]
    return total / rows


def _grid_scales(x_mean: torch.Tensor, w_mean: torch.Tensor | None, ratio: float) -> torch.Tensor:
    """s for one grid point r > 0, normalised by sqrt(max * min) so it spreads around 1."""
    s = x_mean.pow(ratio)
    if w_mean is not None:
        s = s / (w_mean.pow(1.0 - ratio) + _W_MEAN_EPS)
    s = s.clamp(min=_SCALE_MIN)
    s = s / (s.max() * s.min()).sqrt()
    # A dynamic range past float32 gives inf/nan: leave those channels unscaled, as AutoAWQ does.
    return torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))


def _output_loss(
    xs: torch.Tensor,
    weights: list[torch.Tensor],
    s: torch.Tensor,
    fake_quantize: Callable[[torch.Tensor], torch.Tensor],
) -> float:
    """Sum over consumers of mean((x @ W^T - (x / s) @ Q(W * s)^T)^2)."""
    loss = 0.0
    for w in weights:
        q = fake_quantize(w * s).float()
        if q.shape != w.shape:
            raise ValueError(f"fake_quantize returned {tuple(q.shape)} for a weight {tuple(w.shape)}")
        # (x / s) @ Q^T == x @ (Q / s)^T; the difference of weights avoids cancelling two large outputs.
        delta = w - q / s
        sq = 0.0
        for start in range(0, xs.shape[0], _LOSS_CHUNK_ROWS):
            sq += float((xs[start : start + _LOSS_CHUNK_ROWS] @ delta.t()).pow(2).sum(dtype=torch.float64))
        loss += sq / (xs.shape[0] * w.shape[0])
    return loss


@torch.no_grad()
def awq_search_scales(
    x: torch.Tensor,
    weights: list[torch.Tensor],
    fake_quantize: Callable[[torch.Tensor], torch.Tensor],
    *,
    grid: int = 20,
    max_rows: int = 4096,
    duo_scaling: bool = True,
) -> AwqSearchResult:
    """Grid-search AWQ's per-input-channel scales for the consumers `weights` [N_i, K] of inputs x [T, K].

    x_mean uses all T rows; the loss uses at most max_rows rows, evenly spaced. Ratio 0 is s = 1 (plain RTN).
    """
    k = _check_inputs(x, weights, grid, max_rows)
    device = x.device
    ws = [w.detach().to(device=device, dtype=torch.float32) for w in weights]
    x_mean = _channel_abs_mean(x.detach())
    w_mean = _weight_abs_mean(ws) if duo_scaling else None

    t = x.shape[0]
    rows = torch.arange(min(t, max_rows), device=device) * t // min(t, max_rows)
    xs = x.detach()[rows].float()

    ones = torch.ones(k, dtype=torch.float32, device=device)
    loss_unscaled = _output_loss(xs, ws, ones, fake_quantize)
    best_loss, best_ratio, best_scales = loss_unscaled, 0.0, ones
    for i in range(1, grid):
        s = _grid_scales(x_mean, w_mean, i / grid)
        loss = _output_loss(xs, ws, s, fake_quantize)
        # Strictly smaller: a tie keeps the earlier, less scaled point (ratio 0 when nothing helps).
        if loss < best_loss:
            best_loss, best_ratio, best_scales = loss, i / grid, s
    return AwqSearchResult(scales=best_scales, ratio=best_ratio, loss=best_loss, loss_unscaled=loss_unscaled)


@torch.no_grad()
def fold_scales(
    producer_weight: torch.Tensor,
    consumer_weights: list[torch.Tensor],
    scales: torch.Tensor,
    producer_bias: torch.Tensor | None = None,
) -> None:
    """In place: divide the producer of x (norm weight [K], or a linear's rows [K, ...] and bias [K]) by s and
    multiply each consumer's columns [N, K] by s; the float function is unchanged. Dtypes are kept."""
    k = scales.shape[0] if scales.dim() == 1 else -1
    if k < 0 or producer_weight.shape[0] != k or (producer_bias is not None and producer_bias.shape != (k,)):
        bias = None if producer_bias is None else tuple(producer_bias.shape)
        raise ValueError(
            f"scales {tuple(scales.shape)} must be [K] matching the producer's rows {tuple(producer_weight.shape)}"
            f" and bias {bias}"
        )
    for i, w in enumerate(consumer_weights):
        if w.dim() != 2 or w.shape[1] != k:
            raise ValueError(
                f"consumer_weights[{i}] {tuple(w.shape)} must be [N, K={k}] for scales {tuple(scales.shape)}"
            )
    s = scales.detach().float()
    row_view = (k,) + (1,) * (producer_weight.dim() - 1)
    producer_weight.copy_(producer_weight.float() / s.to(producer_weight.device).view(row_view))
    if producer_bias is not None:
        producer_bias.copy_(producer_bias.float() / s.to(producer_bias.device))
    for w in consumer_weights:
        w.copy_(w.float() * s.to(w.device))
