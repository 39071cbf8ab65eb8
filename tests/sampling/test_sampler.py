"""Sampler: greedy, seeded reproducibility, top-k/top-p/min-p sets, logprobs and sampling statistics."""

from __future__ import annotations

import dataclasses
import math

import torch

from forgellm.engine.request import Request
from forgellm.sampling.sampler import Sampler, apply_top_k_top_p_min_p, compute_prompt_logprobs
from forgellm.sampling.sampling_metadata import SamplingMetadata
from forgellm.sampling_params import SamplingParams

CPU = torch.device("cpu")


def make_request(**params: object) -> Request:
    return Request("r", [1, 2, 3], SamplingParams(**params), max_tokens=16)


def build(requests: list[Request], vocab_size: int, seeds: list[int | None] | None = None) -> SamplingMetadata:
    seeds = seeds or [None] * len(requests)
    generators = [None if s is None else torch.Generator().manual_seed(s) for s in seeds]
    return SamplingMetadata.from_requests(requests, generators, vocab_size, CPU)


def kept_sets(filtered: torch.Tensor) -> list[set[int]]:
    return [set(torch.nonzero(torch.isfinite(row)).flatten().tolist()) for row in filtered]


def test_all_greedy_batch_is_argmax_and_skips_optional_steps() -> None:
    logits = torch.randn(5, 50)
    meta = build([make_request(temperature=0.0) for _ in range(5)], 50)
    assert meta.all_greedy and meta.temperature is None and meta.top_k is None and meta.top_p is None
    assert meta.min_p is None and meta.no_penalties and meta.max_num_logprobs is None
    out = Sampler()(logits, meta)
    assert out.sampled_token_ids.dtype == torch.int64 and out.logprobs is None
    assert torch.equal(out.sampled_token_ids, logits.argmax(dim=-1))


def test_greedy_rows_in_a_mixed_batch_are_argmax() -> None:
    logits = torch.randn(6, 40)
    requests = [make_request(temperature=0.0 if i % 2 else 1.0, top_k=3) for i in range(6)]
    meta = build(requests, 40)
    out = Sampler()(logits, meta, torch.Generator().manual_seed(0))
    assert torch.equal(out.sampled_token_ids[1::2], logits[1::2].argmax(dim=-1))


def sample_seeded(row_logits: torch.Tensor, seed: int, companions: int, position: int) -> int:
    """Sample the seeded request placed at `position` among unseeded random companions."""
    vocab = row_logits.shape[0]
    logits = torch.randn(companions + 1, vocab)
    logits[position] = row_logits
    requests = [make_request(temperature=0.9) for _ in range(companions + 1)]
    seeds = [None] * (companions + 1)
    seeds[position] = seed
    requests[position] = make_request(temperature=0.9, top_p=0.95, seed=seed)
    meta = build(requests, vocab, seeds)
    out = Sampler()(logits, meta, torch.Generator().manual_seed(1000 + companions))
    return out.sampled_token_ids[position].item()


def test_seeded_rows_reproduce_regardless_of_batch() -> None:
    torch.manual_seed(0)
    steps = [torch.randn(500) for _ in range(8)]
    alone = [sample_seeded(row, 7, 0, 0) for row in steps]
    crowded = [sample_seeded(row, 7, 5, 3) for row in steps]
    other_place = [sample_seeded(row, 7, 9, 9) for row in steps]
    assert alone == crowded == other_place
    assert [sample_seeded(row, 8, 2, 1) for row in steps] != alone


def test_top_k_keeps_exactly_the_k_best() -> None:
    torch.manual_seed(1)
    vocab = 30
    logits = torch.randn(4, vocab)
    ks = [1, 5, -1, 29]
    meta = build([make_request(top_k=k) for k in ks], vocab)
    kept = kept_sets(apply_top_k_top_p_min_p(logits, meta))
    for row, k in enumerate(ks):
        k = vocab if k == -1 else k
        assert kept[row] == set(logits[row].argsort(descending=True)[:k].tolist())
        finite = torch.isfinite(apply_top_k_top_p_min_p(logits, meta)[row])
        assert torch.equal(apply_top_k_top_p_min_p(logits, meta)[row][finite], logits[row][finite])


def nucleus_by_hand(logits: list[float], top_p: float) -> set[int]:
    exps = [math.exp(x) for x in logits]
    total = sum(exps)
    order = sorted(range(len(logits)), key=lambda i: -logits[i])
    kept, mass = set(), 0.0
    for token in order:
        kept.add(token)
        mass += exps[token] / total
        if mass >= top_p:
            break
    return kept


def test_top_p_keeps_the_minimal_nucleus() -> None:
    torch.manual_seed(2)
    vocab = 20
    logits = torch.randn(6, vocab) * 2
    top_ps = []
    for row in range(6):
        # Put top_p halfway between two cumulative sums so float rounding cannot move the boundary.
        cumulative = logits[row].double().softmax(-1).sort(descending=True).values.cumsum(-1).tolist()
        top_ps.append((cumulative[2 * row] + cumulative[2 * row + 1]) / 2)
    meta = build([make_request(top_p=p) for p in top_ps], vocab)
    kept = kept_sets(apply_top_k_top_p_min_p(logits, meta))
    for row, top_p in enumerate(top_ps):
        assert kept[row] == nucleus_by_hand(logits[row].tolist(), top_p)
        assert len(kept[row]) == 2 * row + 2


def test_top_p_always_keeps_the_best_token() -> None:
    logits = torch.tensor([[10.0, 0.0, 0.0, 0.0]])
    meta = build([make_request(top_p=1e-6)], 4)
    assert kept_sets(apply_top_k_top_p_min_p(logits, meta)) == [{0}]


def test_top_p_applies_to_the_top_k_renormalized_distribution() -> None:
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    # After top-k=2 the probabilities are 4/7 and 3/7: top_p=0.5 keeps only the first.
    meta = build([make_request(top_k=2, top_p=0.5)], 4)
    assert kept_sets(apply_top_k_top_p_min_p(logits, meta)) == [{0}]


def test_min_p_keeps_tokens_above_the_scaled_maximum() -> None:
    torch.manual_seed(3)
    vocab = 25
    logits = torch.randn(3, vocab) * 2
    min_ps = [0.05, 0.31, 0.9]
    meta = build([make_request(min_p=p) for p in min_ps], vocab)
    kept = kept_sets(apply_top_k_top_p_min_p(logits, meta))
    for row, min_p in enumerate(min_ps):
        probs = logits[row].double().softmax(-1).tolist()
        threshold = min_p * max(probs)
        assert all(abs(p - threshold) > 1e-6 for p in probs)  # no borderline token
        assert kept[row] == {i for i, p in enumerate(probs) if p >= threshold}


def test_filtered_tokens_are_never_sampled() -> None:
    torch.manual_seed(4)
    vocab = 12
    row = torch.randn(vocab)
    logits = row.repeat(2000, 1)
    meta = build([make_request(top_k=3, temperature=1.5) for _ in range(2000)], vocab)
    out = Sampler()(logits, meta, torch.Generator().manual_seed(5))
    assert set(out.sampled_token_ids.tolist()) == set(row.argsort(descending=True)[:3].tolist())


def test_temperature_sampling_matches_softmax_frequencies() -> None:
    num = 20000
    row = torch.tensor([1.0, 0.0, -0.5, 0.7])
    temperature = 0.8
    meta = build([make_request(temperature=temperature) for _ in range(num)], 4)
    out = Sampler()(row.repeat(num, 1), meta, torch.Generator().manual_seed(6))
    frequencies = torch.bincount(out.sampled_token_ids, minlength=4).double() / num
    expected = (row.double() / temperature).softmax(-1)
    # 4 standard errors of a binomial proportion: a false failure is very unlikely.
    tolerance = 4 * torch.sqrt(expected * (1 - expected) / num)
    assert torch.all((frequencies - expected).abs() < tolerance), (frequencies, expected)


def test_logprobs_are_raw_log_softmax_with_ranks() -> None:
    torch.manual_seed(7)
    vocab = 16
    logits = torch.randn(4, vocab) * 2
    requests = [
        make_request(logprobs=3, temperature=0.5, repetition_penalty=1.7),
        make_request(logprobs=0, temperature=0.0, presence_penalty=1.0),
        make_request(temperature=2.0, top_k=4),
        make_request(logprobs=1, top_p=0.5),
    ]
    meta = build(requests, vocab)
    assert meta.max_num_logprobs == 3
    original = logits.clone()
    out = Sampler()(logits, meta, torch.Generator().manual_seed(8))
    assert torch.equal(logits, original)  # the caller's logits are left alone
    lp = out.logprobs
    raw = torch.log_softmax(logits, dim=-1)
    sampled = out.sampled_token_ids
    assert lp.token_ids.shape == (4, 4) and lp.logprobs.shape == (4, 4) and lp.ranks.shape == (4,)
    assert torch.equal(lp.token_ids[:, 0], sampled)
    assert torch.allclose(lp.logprobs[:, 0], raw.gather(1, sampled[:, None]).squeeze(1))
    top = raw.topk(3, dim=-1)
    assert torch.equal(lp.token_ids[:, 1:], top.indices)
    assert torch.allclose(lp.logprobs[:, 1:], top.values)
    for row in range(4):
        order = raw[row].argsort(descending=True).tolist()
        assert lp.ranks[row].item() == order.index(sampled[row].item()) + 1


def test_prompt_logprobs() -> None:
    torch.manual_seed(9)
    logits = torch.randn(5, 11)
    targets = torch.tensor([3, 0, 10, 3, 7])
    lp = compute_prompt_logprobs(logits, targets, 2)
    raw = torch.log_softmax(logits, dim=-1)
    assert torch.equal(lp.token_ids[:, 0], targets)
    assert torch.allclose(lp.logprobs[:, 0], raw[torch.arange(5), targets])
    assert torch.equal(lp.token_ids[:, 1:], raw.topk(2).indices)
    expected_ranks = [(raw[i] > raw[i, t]).sum().item() + 1 for i, t in enumerate(targets.tolist())]
    assert lp.ranks.tolist() == expected_ranks
    assert compute_prompt_logprobs(logits, targets, 0).token_ids.shape == (5, 1)


def test_top_k_bound_shortcut_matches_the_full_sort() -> None:
    torch.manual_seed(10)
    vocab = 40
    logits = torch.randn(5, vocab)
    requests = [
        make_request(top_k=3),
        make_request(top_k=7, top_p=0.6),
        make_request(top_k=1, min_p=0.2),
        make_request(top_k=5, top_p=0.3, min_p=0.1),
        make_request(top_k=2, temperature=0.0),  # greedy: not part of the bound
    ]
    meta = build(requests, vocab)
    assert meta.top_k_bound == 7
    shortcut = apply_top_k_top_p_min_p(logits, meta)
    full_sort = apply_top_k_top_p_min_p(logits, dataclasses.replace(meta, top_k_bound=None))
    assert torch.equal(shortcut[:4], full_sort[:4])
    assert build([make_request(top_k=3), make_request(top_p=0.5)], vocab).top_k_bound is None
