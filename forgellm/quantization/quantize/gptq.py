"""GPTQ (Frantar et al. 2022, arXiv:2210.17323) for `forgellm quantize --scheme w4a16-gptq`.

Round-to-nearest rounds every weight on its own; GPTQ rounds one input column at a time and spreads
each column's rounding error over the columns not yet rounded, weighted by the inverse Hessian of the
layer's inputs, so the layer's *output* error on calibration data is what gets minimised. This module
is only the per-layer algorithm: the calibration runner accumulates each linear's Hessian with
`HessianAccumulator`, calls `gptq_quantize`, and writes `dequantized` back before the next layer.

Codes follow forgellm's int weight convention (`rtn_int`, `dequantize_int_weight`): unsigned codes,
symmetric zero point 2**(bits-1) and scale amax / (2**(bits-1) - 1), scales rounded to `scale_dtype`
before the codes are computed against them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ACT_ORDERS = ("none", "static", "group")
_DAMPENING_RETRIES = 3


class HessianAccumulator:
    """Running H = 2/n * sum x x^T over calibration rows, float32 on x's device."""

    def __init__(self, in_features: int, device: torch.device | str = "cpu") -> None:
        self.in_features = in_features
        self._sum = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.num_rows = 0

    def add(self, x: torch.Tensor) -> None:
        """Add a batch of rows x [..., K] (any float dtype); every leading index is one token."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x's last dim {x.shape[-1]} must equal in_features={self.in_features}")
        rows = x.reshape(-1, self.in_features).to(device=self._sum.device, dtype=torch.float32)
        # Keep the plain sum and divide once at the end: no rescaling error accumulates per batch.
        self._sum.addmm_(rows.t(), rows)
        self.num_rows += rows.shape[0]

    @property
    def hessian(self) -> torch.Tensor:
        """H [K, K] float32 over all rows seen so far."""
        if self.num_rows == 0:
            raise ValueError("HessianAccumulator has seen no rows; the layer got no calibration input")
        return self._sum * (2.0 / self.num_rows)


@dataclass
class GptqResult:
    """GPTQ output; w[n, k] = (codes[n, k] - zero) * scales[n, g], g = g_idx[k] if given else k // group."""

    codes: torch.Tensor  # uint8 [N, K], unsigned codes in stored K order
    scales: torch.Tensor  # float32 [N, K // group] (per channel: [N, 1]); values exact in scale_dtype
    zeros: torch.Tensor | None  # uint8 [N, K // group] when asymmetric; None when symmetric (2**(bits-1))
    g_idx: torch.Tensor | None  # int32 [K]: group of every input column when act_order == "group"
    dequantized: torch.Tensor  # float32 [N, K] = (codes - zero) * scale of each column's group


def _group_params(
    w: torch.Tensor, bits: int, symmetric: bool, scale_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) float32 [..., 1] of the rows of w [..., G]; the scale already rounded to scale_dtype."""
    if symmetric:
        qmax = (1 << (bits - 1)) - 1
        scale = (w.abs().amax(dim=-1, keepdim=True) / qmax).clamp_min(1e-8).to(scale_dtype).float()
        return scale, torch.full_like(scale, float(1 << (bits - 1)))
    maxq = (1 << bits) - 1
    # The range always holds 0 so that zero (padding, dead inputs) is exactly representable.
    lo = w.amin(dim=-1, keepdim=True).clamp_max(0)
    hi = w.amax(dim=-1, keepdim=True).clamp_min(0)
    scale = ((hi - lo) / maxq).clamp_min(1e-8).to(scale_dtype).float()
    return scale, torch.round(-lo / scale).clamp(0, maxq)


def _inverse_hessian_factor(hessian: torch.Tensor, dampening: float) -> torch.Tensor:
    """Upper Cholesky factor of the dampened H^-1, retrying with 10x dampening while H is not positive definite."""
    mean_diag = torch.diagonal(hessian).mean()
    tried = []
    damp = dampening
    for _ in range(_DAMPENING_RETRIES + 1):
        tried.append(damp)
        h = hessian.clone()
        torch.diagonal(h).add_(damp * mean_diag)
        lower, info = torch.linalg.cholesky_ex(h)
        if info.item() == 0:
            # H^-1 = (L L^T)^-1, then its upper factor: row i of it holds exactly the OBS update of column i
            # given that columns < i are already fixed, which is what lets GPTQ avoid re-inverting per column.
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if info.item() == 0:
                return upper
        damp = damp * 10 if damp > 0 else 0.01
    raise ValueError(f"GPTQ: the Hessian is not positive definite even with dampening {tried} x mean(diag(H))")


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    bits: int = 4,
    group_size: int | None = 128,
    symmetric: bool = True,
    act_order: str = "none",
    dampening: float = 0.01,
    block_size: int = 128,
    scale_dtype: torch.dtype = torch.float32,
) -> GptqResult:
    """Quantize weight [N, K] with GPTQ against the Hessian [K, K] of its inputs; group_size None is per channel.

    act_order "static" visits columns by decreasing diag(H) with groups (and their scales, from the
    original weights) kept in column order; "group" forms groups in the visiting order and returns g_idx.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [N, K], got {tuple(weight.shape)}")
    n, k = weight.shape
    if tuple(hessian.shape) != (k, k):
        raise ValueError(f"hessian must be [K, K] = [{k}, {k}], got {tuple(hessian.shape)}")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    if act_order not in ACT_ORDERS:
        raise ValueError(f"act_order must be one of {ACT_ORDERS}, got {act_order!r}")
    if block_size <= 0 or dampening < 0:
        raise ValueError(f"block_size must be > 0 and dampening >= 0, got {block_size} and {dampening}")
    group = group_size or k
    if group <= 0 or k % group:
        raise ValueError(f"group_size {group_size} must be positive and divide the input size K={k}")
    num_groups, maxq = k // group, (1 << bits) - 1
    device = weight.device

    w = weight.detach().to(torch.float32).clone()
    h = hessian.detach().to(device=device, dtype=torch.float32).clone()
    # A column no calibration token ever used: no error can be pushed onto it and its weight cannot
    # matter on that data, so zero it and give H a unit diagonal there to keep H invertible.
    dead = torch.diagonal(h) == 0
    torch.diagonal(h)[dead] = 1.0
    w[:, dead] = 0.0

    scales = torch.empty(n, num_groups, dtype=torch.float32, device=device)
    zeros = torch.empty_like(scales)
    if act_order == "static":
        # Groups stay in column order, so every scale must be known before the permuted sweep starts.
        s, z = _group_params(w.view(n, num_groups, group), bits, symmetric, scale_dtype)
        scales.copy_(s.squeeze(-1))
        zeros.copy_(z.squeeze(-1))

    perm = None
    if act_order != "none":
        # Columns with the largest input energy first, while the most columns remain to absorb their error.
        perm = torch.argsort(torch.diagonal(h), descending=True)
        w = w[:, perm]
        h = h[perm][:, perm]
    # Group of each working position: for "static" it is the original column's group.
    col_group = torch.arange(k, device=device) // group
    if act_order == "static":
        col_group = col_group[perm]
    col_group_list = col_group.tolist()

    hinv = _inverse_hessian_factor(h, dampening)
    del h
    codes = torch.empty(n, k, dtype=torch.uint8, device=device)

    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if act_order != "static" and col % group == 0:
                # Scale from the weights as they are now, error updates included; columns past this block
                # have not yet received the lazy update from columns i1..col, so add it for them here.
                end = col + group
                current = w1[:, i : end - i1]
                if end > i2:
                    rest = w[:, i2:end] - err1[:, :i] @ hinv[i1:col, i2:end]
                    current = torch.cat([current, rest], dim=1)
                s, z = _group_params(current, bits, symmetric, scale_dtype)
                scales[:, col_group_list[col]] = s.squeeze(-1)
                zeros[:, col_group_list[col]] = z.squeeze(-1)
            g = col_group_list[col]
            scale, zero = scales[:, g], zeros[:, g]
            x = w1[:, i]
            q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
            codes[:, col] = q.to(torch.uint8)
            deq = (q - zero) * scale
            err = (x - deq) / hinv1[i, i]
            # Optimal (OBS) update of the remaining columns of this block for this column's rounding error.
            w1[:, i:] -= err.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            w1[:, i] = deq
            err1[:, i] = err
        w[:, i1:i2] = w1
        # Lazy batch update: the rest of the matrix sees this block's errors in one matmul.
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]

    g_idx = None
    if perm is not None:
        inv = torch.argsort(perm)
        codes, w = codes[:, inv], w[:, inv]
        if act_order == "group":
            g_idx = col_group[inv].to(torch.int32)
    return GptqResult(
        codes=codes,
        scales=scales,
        zeros=None if symmetric else zeros.to(torch.uint8),
        g_idx=g_idx,
        dequantized=w,
    )
