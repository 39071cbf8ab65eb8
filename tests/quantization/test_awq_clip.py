"""AWQ's clipping search: per (row, group) bounds that lower the quantized output error on unseen rows of the
same distribution, never below the shrink limit, and no clipping where the grid already fits the weights."""

from __future__ import annotations

import pytest
import torch

from forgellm.kernels.int_weight_gemm import dequantize_int_weight, pack_int_weight
from forgellm.quantization.online import rtn_int
from forgellm.quantization.quantize.awq_clip import awq_search_clip, clip_weight


def rtn_dequantized(w: torch.Tensor, group: int) -> torch.Tensor:
    """forgellm's own round-to-nearest int4 and its dequantization (independent of the clipping code)."""
    codes, scales = rtn_int(w, 4, group)
    return dequantize_int_weight(pack_int_weight(codes, 4), scales.t().contiguous(), None, 4, group).float()


def test_clipping_lowers_the_error_on_unseen_rows():
    torch.manual_seed(0)
    n, k, group = 96, 128, 32
    # Heavy tails: a few large weights per group stretch round-to-nearest's grid over the many small ones.
    w = torch.randn(n, k) * torch.where(torch.rand(n, k) < 0.03, 6.0, 1.0)
    seen, unseen = torch.randn(1024, k), torch.randn(1024, k)
    bounds = awq_search_clip(seen, w, 4, group)
    amax = w.abs().view(n, k // group, group).amax(-1)
    assert torch.all(bounds <= amax + 1e-6) and torch.all(bounds >= 0.5 * amax - 1e-6)
    assert (bounds < amax - 1e-6).float().mean() > 0.2  # clipping is chosen for many groups
    plain = (unseen @ (w - rtn_dequantized(w, group)).t()).pow(2).mean()
    clipped = (unseen @ (w - rtn_dequantized(clip_weight(w, bounds), group)).t()).pow(2).mean()
    assert clipped < 0.97 * plain, (clipped, plain)  # measured 0.945


def test_weights_on_the_grid_are_not_clipped():
    torch.manual_seed(1)
    codes = torch.randint(-7, 8, (16, 64)).float()
    codes[:, ::32] = 7.0  # every group reaches the top code: its grid represents it exactly
    w = codes * 0.01
    bounds = awq_search_clip(torch.randn(256, 64), w, 4, 32)
    torch.testing.assert_close(bounds, w.abs().view(16, 2, 32).amax(-1))


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"x \(4, 8\) must be \[T, K=16\]"):
        awq_search_clip(torch.zeros(4, 8), torch.zeros(2, 16), 4, 8)
    with pytest.raises(ValueError, match="group size 5 does not divide the input size 16"):
        awq_search_clip(torch.zeros(4, 16), torch.zeros(2, 16), 4, 5)
