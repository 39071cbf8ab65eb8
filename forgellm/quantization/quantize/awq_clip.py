"""AWQ's weight clipping (AutoAWQ's auto_clip): after the scales, each (output row, input group) of a weight
may quantize better with its range clipped below its largest value, since the grid then resolves the many
small weights more finely than it loses on the few large ones.

For every group the bound max|w| * r is searched on r = 1, 1 - 1/grid, ... down to 1 - max_shrink, scoring
the group's own partial output sum_k x_k w_k on calibration rows: groups are independent, so one pass over the
grid picks every group's ratio at once. Quantization follows forgellm's symmetric int convention
(forgellm/quantization/online.py rtn_int): scale = bound / (2**(bits-1) - 1).
"""

from __future__ import annotations

import torch

_ROWS_PER_CHUNK = 64  # output rows scored at once: bounds the [rows, T, G] partial sums


@torch.no_grad()
def awq_search_clip(
    x: torch.Tensor,
    weight: torch.Tensor,
    bits: int,
    group_size: int | None,
    *,
    grid: int = 20,
    max_shrink: float = 0.5,
    max_rows: int = 512,
) -> torch.Tensor:
    """The clipping bound [N, G] (float32) of each (row, group) of weight [N, K] for inputs x [T, K]."""
    n, k = weight.shape
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"x {tuple(x.shape)} must be [T, K={k}] for weight {tuple(weight.shape)}")
    group = group_size or k
    if k % group:
        raise ValueError(f"group size {group} does not divide the input size {k}")
    t = x.shape[0]
    rows = torch.arange(min(t, max_rows), device=x.device) * t // min(t, max_rows)
    xg = x[rows].float().to(weight.device).view(-1, k // group, group)  # [T, G, g]
    qmax = (1 << (bits - 1)) - 1
    bounds = torch.empty(n, k // group, dtype=torch.float32, device=weight.device)
    for start in range(0, n, _ROWS_PER_CHUNK):
        w = weight[start : start + _ROWS_PER_CHUNK].float().view(-1, k // group, group)  # [R, G, g]
        exact = torch.einsum("tgk,rgk->rtg", xg, w)
        amax = w.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8)  # [R, G, 1]
        best_err = torch.full(amax.shape[:2], float("inf"), device=w.device)
        best = amax.squeeze(-1).clone()
        for i in range(int(max_shrink * grid)):
            bound = amax * (1 - i / grid)
            scale = bound / qmax
            q = torch.round(w.clamp(-bound, bound) / scale).clamp(-qmax - 1, qmax) * scale
            err = (torch.einsum("tgk,rgk->rtg", xg, q) - exact).pow(2).mean(dim=1)  # [R, G]
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, bound.squeeze(-1), best)
        bounds[start : start + _ROWS_PER_CHUNK] = best
    return bounds


def clip_weight(weight: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """weight [N, K] clamped to +-bounds [N, G] group by group (float32)."""
    n, k = weight.shape
    groups = bounds.shape[1]
    b = bounds.unsqueeze(-1)
    return weight.float().view(n, groups, k // groups).clamp(-b, b).view(n, k)
