"""AWQ scale search and folding: errors measured against independently written float references."""

from __future__ import annotations

import pytest
import torch

from forgellm.kernels.int_weight_gemm import dequantize_int_weight, pack_int_weight
from forgellm.quantization.online import rtn_int
from forgellm.quantization.quantize.awq import AwqSearchResult, awq_search_scales, fold_scales

GROUP = 32
SALIENT = [3, 40, 77, 101, 126]  # within every K used here


def rtn4(w: torch.Tensor) -> torch.Tensor:
    """The runner's fake quantizer: 4-bit symmetric round-to-nearest, groups of 32, through the packed layout."""
    q, scales = rtn_int(w, 4, GROUP)
    return dequantize_int_weight(pack_int_weight(q, 4), scales.t().contiguous(), None, 4, GROUP)


def llm_like_inputs(rows: int, k: int, seed: int) -> torch.Tensor:
    """Gaussian activations with a fixed few channels ~30x larger, as LLM hidden states have."""
    gen = torch.Generator().manual_seed(seed)
    magnitude = torch.ones(k)
    magnitude[torch.tensor(SALIENT)] = 30.0
    return torch.randn(rows, k, generator=gen) * magnitude


def output_mse(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor) -> float:
    """mean((x @ W^T - (x / s) @ Q(W * s)^T)^2), written out in float64 for the reference."""
    ref = x.double() @ w.double().t()
    got = (x.double() / s.double()) @ rtn4(w * s).double().t()
    return float((ref - got).pow(2).mean())


def consumers(k: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(96, k, generator=gen) * 0.05, torch.randn(64, k, generator=gen) * 0.05]


def test_awq_beats_rtn_on_held_out_rows() -> None:
    k = 256
    ws = consumers(k, seed=1)
    calib, held_out = llm_like_inputs(2048, k, seed=2), llm_like_inputs(2048, k, seed=3)
    result = awq_search_scales(calib.to(torch.bfloat16), ws, rtn4)
    assert isinstance(result, AwqSearchResult)
    assert result.scales.dtype == torch.float32 and result.scales.shape == (k,)
    assert 0.0 < result.ratio < 1.0
    ones = torch.ones(k)
    rtn_err = sum(output_mse(held_out, w, ones) for w in ws)
    awq_err = sum(output_mse(held_out, w, result.scales) for w in ws)
    assert awq_err < 0.6 * rtn_err, (awq_err, rtn_err)
    # The salient channels get the largest scales.
    assert set(result.scales.topk(5).indices.tolist()) == set(SALIENT)


def test_reported_losses_match_a_float64_reference() -> None:
    k = 128
    ws = consumers(k, seed=4)
    x = llm_like_inputs(512, k, seed=5)  # fewer rows than max_rows: the loss sees all of them
    result = awq_search_scales(x, ws, rtn4, grid=10)
    assert result.ratio in [i / 10 for i in range(10)]
    rtn_err = sum(output_mse(x, w, torch.ones(k)) for w in ws)
    assert result.loss_unscaled == pytest.approx(rtn_err, rel=1e-4)
    assert result.loss == pytest.approx(sum(output_mse(x, w, result.scales) for w in ws), rel=1e-4)
    assert result.loss <= result.loss_unscaled


def test_uniform_activations_choose_ratio_zero() -> None:
    # |x| is exactly 1 in every channel: activation-only scaling is s = 1 at every ratio, so nothing can help.
    k = 128
    gen = torch.Generator().manual_seed(6)
    x = torch.randint(0, 2, (1024, k), generator=gen).float() * 2 - 1
    result = awq_search_scales(x, consumers(k, seed=7), rtn4, duo_scaling=False)
    assert result.ratio == 0.0
    assert torch.equal(result.scales, torch.ones(k))
    assert result.loss == result.loss_unscaled


def test_weights_already_on_the_grid_keep_ratio_zero() -> None:
    # RTN reproduces these weights exactly, so any scaling (duo scaling included) can only add error.
    k, n = 128, 64
    gen = torch.Generator().manual_seed(8)
    codes = torch.randint(-7, 8, (n, k), generator=gen).float()
    codes[:, ::GROUP] = 7.0  # every group reaches the grid's end, so its RTN scale is its step
    step = torch.rand(n, k // GROUP, generator=gen).add(0.5).repeat_interleave(GROUP, dim=1) / 64
    result = awq_search_scales(llm_like_inputs(1024, k, seed=9), [codes * step], rtn4)
    assert result.ratio == 0.0
    assert torch.equal(result.scales, torch.ones(k))
    assert result.loss == result.loss_unscaled
    assert result.loss < 1e-10


@pytest.mark.parametrize("duo_scaling", [True, False])
def test_zero_channels_give_positive_finite_scales(duo_scaling: bool) -> None:
    k = 128
    x = llm_like_inputs(1024, k, seed=10)
    x[:, 5:20] = 0.0
    ws = consumers(k, seed=11)
    ws[0][:, 30] = 0.0  # a dead weight column too
    result = awq_search_scales(x, ws, rtn4, duo_scaling=duo_scaling)
    assert torch.isfinite(result.scales).all() and (result.scales > 0).all()
    assert result.loss <= result.loss_unscaled


def test_subsampling_is_deterministic() -> None:
    k = 128
    x = llm_like_inputs(5000, k, seed=12)
    ws = consumers(k, seed=13)
    a = awq_search_scales(x, ws, rtn4, max_rows=700)
    b = awq_search_scales(x, ws, rtn4, max_rows=700)
    assert torch.equal(a.scales, b.scales) and (a.ratio, a.loss, a.loss_unscaled) == (b.ratio, b.loss, b.loss_unscaled)


def rms_norm(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * weight


def test_fold_into_rms_norm_keeps_the_function() -> None:
    k = 64
    gen = torch.Generator().manual_seed(14)
    h = torch.randn(32, k, generator=gen)
    norm_w = torch.rand(k, generator=gen) + 0.5
    q, v = torch.randn(48, k, generator=gen), torch.randn(16, k, generator=gen)
    before = [rms_norm(h, norm_w) @ q.t(), rms_norm(h, norm_w) @ v.t()]
    s = torch.rand(k, generator=gen) * 10 + 0.1
    fold_scales(norm_w, [q, v], s)
    torch.testing.assert_close(rms_norm(h, norm_w) @ q.t(), before[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rms_norm(h, norm_w) @ v.t(), before[1], rtol=1e-5, atol=1e-5)


def test_fold_into_a_linear_with_bias_keeps_the_function() -> None:
    # v_proj (with bias) feeding o_proj: v's rows and bias shrink by s, o_proj's columns grow by it.
    k_in, k = 48, 64
    gen = torch.Generator().manual_seed(15)
    h = torch.randn(32, k_in, generator=gen)
    wv, bv, wo = torch.randn(k, k_in, generator=gen), torch.randn(k, generator=gen), torch.randn(40, k, generator=gen)
    before = (h @ wv.t() + bv) @ wo.t()
    s = torch.rand(k, generator=gen) * 10 + 0.1
    fold_scales(wv, [wo], s, producer_bias=bv)
    torch.testing.assert_close((h @ wv.t() + bv) @ wo.t(), before, rtol=1e-5, atol=1e-4)


def test_fold_keeps_dtypes() -> None:
    k = 32
    norm_w, consumer = torch.ones(k, dtype=torch.bfloat16), torch.ones(8, k, dtype=torch.bfloat16)
    s = torch.full((k,), 4.0)
    fold_scales(norm_w, [consumer], s)
    assert norm_w.dtype == consumer.dtype == torch.bfloat16
    assert torch.equal(norm_w, torch.full((k,), 0.25, dtype=torch.bfloat16))
    assert torch.equal(consumer, torch.full((8, k), 4.0, dtype=torch.bfloat16))


def test_bad_inputs_name_the_shapes() -> None:
    x = torch.randn(16, 64)
    with pytest.raises(ValueError, match=r"\(16, 64\).*\(32, 48\)"):
        awq_search_scales(x, [torch.randn(32, 64), torch.randn(32, 48)], rtn4)
    with pytest.raises(ValueError, match=r"empty.*\(16, 64\)"):
        awq_search_scales(x, [], rtn4)
    with pytest.raises(ValueError, match=r"\(8, 48\)"):
        fold_scales(torch.ones(64), [torch.ones(8, 48)], torch.ones(64))
