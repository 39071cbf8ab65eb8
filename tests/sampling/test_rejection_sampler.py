"""Rejection sampler: speculation keeps the target's distribution (exactly and statistically), greedy rows match.

The fixture is a tiny Markov "target model" and "draft model" over V = 6 tokens (first-token and next-token
distributions). The target goes through the normal sampler's temperature and top-p 0.9 processing, so
speculation is checked on the distribution the engine will hand it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch
from scipy import stats

from forgellm.engine.request import Request
from forgellm.sampling import rejection_sampler as rs
from forgellm.sampling.rejection_sampler import recovery_probs, rejection_sample
from forgellm.sampling.sampler import Sampler, apply_top_k_top_p_min_p
from forgellm.sampling.sampling_metadata import SamplingMetadata
from forgellm.sampling_params import SamplingParams

V = 6
NUM_SAMPLES = 20_000
ALPHA = 0.001
PARAMS = SamplingParams(temperature=1.0, top_p=0.9)
# Row 0: the first token's logits; row 1 + c: the next token's logits after token c. Row 1 + 3 is
# peaked so that top-p keeps a single token there (p(x) = 1, the zero-residual case).
TARGET_LOGITS = torch.tensor(
    [
        [1.2, 0.3, -0.5, 0.9, -1.5, 0.1],
        [0.2, 1.5, 0.4, -0.8, 0.6, -2.0],
        [-0.3, 0.1, 1.1, 0.7, -1.0, 0.5],
        [1.6, -0.4, 0.2, 0.3, 0.9, -1.2],
        [5.0, 0.1, -0.6, 0.4, -0.2, 0.0],
        [0.4, 0.8, -1.1, 1.3, 0.2, 0.6],
        [-0.9, 0.5, 0.7, 0.0, 1.4, 0.3],
    ]
)
# The draft disagrees with the target and puts mass on tokens that top-p removes from the target.
DRAFT_LOGITS = torch.tensor(
    [
        [0.1, 1.0, 0.4, -0.2, 0.8, 0.5],
        [1.0, 0.2, -0.5, 0.6, 0.3, 0.9],
        [0.7, -0.6, 0.1, 1.2, 0.4, -0.3],
        [0.3, 0.8, 0.9, -0.4, 0.2, 1.1],
        [0.5, 0.6, 0.2, 0.4, 0.3, 0.1],
        [1.1, -0.2, 0.6, 0.1, 0.9, 0.0],
        [0.2, 0.9, -0.3, 1.0, 0.4, 0.6],
    ]
)


def one_hot(ids: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(ids, V).double()


def process(logits: torch.Tensor) -> torch.Tensor:
    """The normal sampler's processing of random rows: temperature, then its own top-k/top-p/min-p helper."""
    requests = [Request(f"r{i}", [1], PARAMS, max_tokens=4) for i in range(logits.shape[0])]
    meta = SamplingMetadata.from_requests(requests, [None] * len(requests), V, torch.device("cpu"))
    if meta.temperature is not None:
        logits = logits / meta.temperature.unsqueeze(1)
    return apply_top_k_top_p_min_p(logits, meta).softmax(dim=-1)


@functools.cache
def models() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(p first [V], p next [V, V], q first [V], q next [V, V]) in float64."""
    p = process(TARGET_LOGITS).double()
    q = DRAFT_LOGITS.softmax(dim=-1).double()
    return p[0], p[1:], q[0], q[1:]


def target_joint() -> torch.Tensor:
    """[V, V] exact P(x1, x2) of sampling without speculation."""
    p0, pt, _, _ = models()
    return p0.unsqueeze(1) * pt


def exact_speculative_joint(q0: torch.Tensor, qt: torch.Tensor, deterministic: bool) -> torch.Tensor:
    """[V, V] exact P(x1, x2) of k = 2 speculation: drafts from q0, qt enumerated, the module's acceptance and
    recovery distributions, no random draws. `deterministic`: q one-hot, passed as draft_probs=None.
    """
    p0, pt, _, _ = models()
    c, d = (g.flatten() for g in torch.meshgrid(torch.arange(V), torch.arange(V), indexing="ij"))
    no_bonus = torch.zeros(V * V, dtype=torch.bool)
    q_or_none = (lambda q: None) if deterministic else (lambda q: q)
    # Rows (c, d): the first step drafts c then d. A row rejected at once emits one token c; a second
    # step from context c that drafts d then gives the next token.
    target = torch.stack([p0.expand(V * V, V), pt[c], pt[d]], dim=1)
    draft = torch.stack([q0.expand(V * V, V), qt[c]], dim=1)
    a = rs.acceptance_probs(target, torch.stack([c, d], dim=1), q_or_none(draft))
    w0 = recovery_probs(target[:, 0], q_or_none(draft[:, 0]), c, no_bonus)
    w1 = recovery_probs(target[:, 1], q_or_none(draft[:, 1]), d, no_bonus)
    a_next = rs.acceptance_probs(pt[c].unsqueeze(1), d.unsqueeze(1), q_or_none(qt[c].unsqueeze(1)))[:, 0:1]
    first_of_step = a_next * one_hot(d) + (1 - a_next) * recovery_probs(pt[c], q_or_none(qt[c]), d, no_bonus)
    next_after = (qt[c, d].unsqueeze(1) * first_of_step).view(V, V, V).sum(dim=1)  # [context, token]

    weight = q0[c] * qt[c, d]
    both = (weight * a[:, 0] * a[:, 1]).view(-1, 1, 1) * one_hot(c).unsqueeze(2) * one_hot(d).unsqueeze(1)
    second_rejected = (weight * a[:, 0] * (1 - a[:, 1])).view(-1, 1, 1) * one_hot(c).unsqueeze(2) * w1.unsqueeze(1)
    first_rejected = (weight * (1 - a[:, 0])).view(-1, 1, 1) * w0.unsqueeze(2) * next_after.unsqueeze(0)
    return (both + second_rejected + first_rejected).sum(dim=0)


def with_rule(rule: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    """An acceptance_probs replacement that accepts x with probability rule(p(x), q(x))."""

    def acceptance(target: torch.Tensor, ids: torch.Tensor, draft: torch.Tensor | None) -> torch.Tensor:
        index = ids.clamp_min(0).unsqueeze(-1)
        p = target[:, : ids.shape[1]].gather(-1, index).squeeze(-1)
        return rule(p, torch.ones_like(p) if draft is None else draft.gather(-1, index).squeeze(-1))

    return acceptance


# Deliberately wrong acceptance rules, swapped in for acceptance_probs to show the tests have power.
WRONG_RULES = {
    "always_accept": lambda p, q: torch.ones_like(p),
    "accept_when_q_gt_p": lambda p, q: (q > p).to(p.dtype),
    "inverted_ratio": lambda p, q: (q / p).nan_to_num(1.0).clamp(0, 1),
    # A subtler error: sqrt(min(1, p/q)) accepts too often but still never accepts p(x) = 0.
    "sqrt_ratio": lambda p, q: (p / q).clamp(0, 1).sqrt(),
}
# (q first, q next given previous, deterministic). N-gram style ones are one-hot, passed as draft_probs=None,
# and propose the only token top-p keeps (p = 1) and tokens top-p removes (p = 0).
PROPOSERS = {
    "draft_model": lambda: (*models()[2:], False),
    "draft_equals_target": lambda: (*models()[:2], False),  # p == q: the residual is all zero
    "ngram_likely": lambda: (one_hot(torch.tensor(0)), one_hot(torch.tensor([1, 2, 0, 0, 3, 4])), True),
    "ngram_filtered": lambda: (one_hot(torch.tensor(4)), one_hot(torch.tensor([5, 5, 5, 5, 5, 5])), True),
    "ngram_mixed": lambda: (one_hot(torch.tensor(2)), one_hot(torch.tensor([3, 0, 4, 1, 5, 2])), True),
}


@pytest.mark.parametrize("proposer", sorted(PROPOSERS))
def test_exact_distribution_equals_target(proposer: str) -> None:
    joint = exact_speculative_joint(*PROPOSERS[proposer]())
    assert torch.allclose(joint, target_joint(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("rule", sorted(WRONG_RULES))
def test_exact_distribution_detects_wrong_rule(rule: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rs, "acceptance_probs", with_rule(WRONG_RULES[rule]))
    error = (exact_speculative_joint(*PROPOSERS["draft_model"]()) - target_joint()).abs().sum() / 2
    assert error > 0.05, f"{rule}: total variation {error:.4f}"


def speculative_pairs(seed: int) -> torch.Tensor:
    """NUM_SAMPLES (x1, x2) drawn with k = 2 drafts from the draft model, verified by rejection_sample."""
    gen = torch.Generator().manual_seed(seed)
    p0, pt, q0, qt = (m.float() for m in models())
    n = NUM_SAMPLES
    d1 = torch.multinomial(q0.expand(n, V), 1, generator=gen).squeeze(1)
    d2 = torch.multinomial(qt[d1], 1, generator=gen).squeeze(1)
    target = torch.stack([p0.expand(n, V), pt[d1], pt[d2]], dim=1)
    greedy = torch.zeros(n, dtype=torch.bool)
    draft = torch.stack([q0.expand(n, V), qt[d1]], 1)
    out = rejection_sample(target, torch.stack([d1, d2], 1), draft, greedy, None, default_generator=gen)
    x1, x2 = out.token_ids[:, 0], out.token_ids[:, 1]
    # Rows that emitted one token speculate again from it; half of them draft a single token.
    num_drafts = 1 + torch.arange(n) % 2
    e1 = torch.multinomial(qt[x1], 1, generator=gen).squeeze(1)
    e2 = torch.where(num_drafts == 2, torch.multinomial(qt[e1], 1, generator=gen).squeeze(1), -1)
    draft2 = torch.stack([qt[x1], torch.where((num_drafts == 2).unsqueeze(1), qt[e1], 0.0)], 1)
    target2 = torch.stack([pt[x1], pt[e1], pt[e2.clamp_min(0)]], 1)
    out2 = rejection_sample(target2, torch.stack([e1, e2], 1), draft2, greedy, None, num_drafts, default_generator=gen)
    return torch.stack([x1, torch.where(out.num_accepted == 0, out2.token_ids[:, 0], x2)], 1)


@functools.cache
def plain_pairs() -> torch.Tensor:
    """NUM_SAMPLES (x1, x2) from the normal Sampler, one token at a time, on the same target logits."""
    gen = torch.Generator().manual_seed(1)
    requests = [Request(f"r{i}", [1], PARAMS, max_tokens=4) for i in range(NUM_SAMPLES)]
    meta = SamplingMetadata.from_requests(requests, [None] * NUM_SAMPLES, V, torch.device("cpu"))
    x1 = Sampler()(TARGET_LOGITS[0].expand(NUM_SAMPLES, V), meta, gen).sampled_token_ids
    x2 = Sampler()(TARGET_LOGITS[1 + x1], meta, gen).sampled_token_ids
    return torch.stack([x1, x2], 1)


def chi_square(spec: torch.Tensor, plain: torch.Tensor) -> tuple[float, float, int]:
    """Homogeneity test of the two samples' joint (x1, x2) counts over the cells either one hit."""
    counts = torch.stack([torch.bincount(s[:, 0] * V + s[:, 1], minlength=V * V) for s in (spec, plain)])
    counts = counts[:, counts.sum(0) > 0]
    result = stats.chi2_contingency(counts.numpy(), correction=False)
    return float(result.statistic), float(result.pvalue), int(result.dof)


def test_chi_square_speculative_matches_plain_sampling() -> None:
    spec = speculative_pairs(seed=0)
    statistic, pvalue, dof = chi_square(spec, plain_pairs())
    print(f"correct rule: chi2 = {statistic:.2f}, dof = {dof}, p = {pvalue:.4f}")
    assert pvalue > ALPHA, (statistic, dof, pvalue)
    # Cells the target's top-p makes impossible never occur, and the rest fit the exact target joint.
    joint = target_joint().flatten()
    counts = torch.bincount(spec[:, 0] * V + spec[:, 1], minlength=V * V).double()
    assert counts[joint == 0].sum() == 0
    expected = joint[joint > 0] / joint[joint > 0].sum() * NUM_SAMPLES
    fit = stats.chisquare(counts[joint > 0].numpy(), expected.numpy())
    print(f"correct rule against the exact target: chi2 = {fit.statistic:.2f}, p = {fit.pvalue:.4f}")
    assert fit.pvalue > ALPHA


@pytest.mark.parametrize("rule", sorted(WRONG_RULES))
def test_chi_square_rejects_wrong_acceptance_rule(rule: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rs, "acceptance_probs", with_rule(WRONG_RULES[rule]))
    statistic, pvalue, dof = chi_square(speculative_pairs(seed=0), plain_pairs())
    print(f"{rule}: chi2 = {statistic:.2f}, dof = {dof}, p = {pvalue:.3g}")
    assert pvalue < ALPHA, (statistic, dof, pvalue)


def one_hot_probs(argmax: list[list[int]], margin: float = 0.5) -> torch.Tensor:
    """[B, k+1, V] distributions whose argmax at each position is given; the rest of the mass spread evenly."""
    ids = torch.tensor(argmax)
    return torch.full((*ids.shape, V), (1 - margin) / (V - 1)).scatter(-1, ids.unsqueeze(-1), margin)


def test_greedy_rows_accept_exact_matches_and_emit_argmax() -> None:
    target = one_hot_probs([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4], [5, 0, 0, 2], [1, 1, 1, 1]])
    target[4, 0] = torch.tensor([0.1, 0.3, 0.1, 0.3, 0.1, 0.1])  # a tie: the lowest id wins, as in torch.argmax
    drafts = torch.tensor([[1, 2, 3], [1, 5, 3], [0, 2, 3], [5, 0, 0], [3, 1, 1]])
    # This draft distribution would make random rows reject everything; greedy rows ignore it.
    draft_probs = torch.full((5, 3, V), 1.0 / V).scatter(-1, drafts.unsqueeze(-1), 1.0)
    expected = [[1, 2, 3, 4], [1, 2, -1, -1], [1, -1, -1, -1], [5, 0, 0, 2], [1, -1, -1, -1]]
    for seed in (0, 1):
        gen = torch.Generator().manual_seed(seed)
        out = rejection_sample(target, drafts, draft_probs, torch.ones(5, dtype=torch.bool), default_generator=gen)
        assert out.token_ids.tolist() == expected and out.num_accepted.tolist() == [3, 1, 0, 3, 0]


def test_mixed_batch_with_short_drafts_and_padding() -> None:
    """Greedy and random rows together; random rows here have draws-free outcomes (p(x) >= q(x) or p(x) = 0)."""
    target = one_hot_probs([[1, 2, 3, 4]] * 4, margin=1.0)  # one-hot: every random outcome is forced
    drafts = torch.tensor([[1, 2, 3], [1, 2, -1], [1, 0, 3], [-1, -1, -1]])
    greedy = torch.tensor([True, True, False, False])
    num_drafts = torch.tensor([3, 2, 3, 0])
    gens = [None, None, None, torch.Generator().manual_seed(3)]
    out = rejection_sample(target, drafts, None, greedy, gens, num_drafts)
    # Row 2 rejects token 0 (p = 0) and recovers the only token p leaves; row 3 drafted nothing: bonus only.
    assert out.token_ids.tolist() == [[1, 2, 3, 4], [1, 2, 3, -1], [1, 2, -1, -1], [1, -1, -1, -1]]
    assert out.num_accepted.tolist() == [3, 2, 1, 0]
    assert out.token_ids.dtype == torch.int64 and out.num_accepted.dtype == torch.int64


def test_zero_draft_tokens_emit_the_bonus_token() -> None:
    no_drafts = torch.zeros(1, 0, dtype=torch.int64)
    out = rejection_sample(one_hot_probs([[4]], 1.0), no_drafts, torch.zeros(1, 0, V), torch.zeros(1, dtype=torch.bool))
    assert out.token_ids.tolist() == [[4]] and out.num_accepted.tolist() == [0]


def test_seeded_rows_reproduce_whatever_their_batch() -> None:
    _, pt, _, qt = (m.float() for m in models())
    b, k = 64, 3
    drafts = torch.randint(0, V, (b, k), generator=torch.Generator().manual_seed(0))
    target = pt[torch.cat([drafts, drafts[:, :1]], 1)]
    draft_probs = qt[drafts]

    def run(seeds: list[int], rows: torch.Tensor, greedy_row: bool) -> torch.Tensor:
        greedy = torch.zeros(len(rows), dtype=torch.bool)
        greedy[0] = greedy_row
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return rejection_sample(target[rows], drafts[rows], draft_probs[rows], greedy, gens).token_ids

    rows = torch.arange(b)
    first = run(list(range(b)), rows, False)
    assert torch.equal(first, run(list(range(b)), rows, False))
    # Reversed order, different companions (row 0 greedy): every seeded random row gives the same tokens.
    again = run(list(range(b))[::-1], rows.flip(0), True).flip(0)
    assert torch.equal(first[:-1], again[:-1])
    assert not torch.equal(first, run(list(range(100, 100 + b)), rows, False))


@pytest.mark.parametrize(
    ("shapes", "message"),  # shapes: target_probs, draft_token_ids, draft_probs, greedy
    [
        (((2, 3, V), (2, 3), None, (2,)), r"target_probs must be \[B, k\+1, V\] = \[2, 4, V\].*\(2, 3, 6\)"),
        (((2, 4, V), (2, 3), (2, 3, V + 1), (2,)), r"draft_probs must be .*\[2, 3, 6\], got shape \(2, 3, 7\)"),
        (((2, 4, V), (2, 3), None, (3,)), r"greedy must be .*\[2\].*\(3,\)"),
        (((2, 4, V), (6,), None, (2,)), r"draft_token_ids must be \[B, k\], got shape \(6,\)"),
        (((3, 4, V), (2, 3), None, (2,)), r"\[2, 4, V\].*\(3, 4, 6\)"),
    ],
)
def test_bad_shapes_raise_value_error(shapes: tuple, message: str) -> None:
    target_shape, draft_shape, probs_shape, greedy_shape = shapes
    probs = None if probs_shape is None else torch.rand(probs_shape)
    drafts, greedy = torch.zeros(draft_shape, dtype=torch.int64), torch.zeros(greedy_shape, dtype=torch.bool)
    with pytest.raises(ValueError, match=message):
        rejection_sample(torch.rand(target_shape), drafts, probs, greedy)


def test_bad_generators_and_num_draft_tokens_raise_value_error() -> None:
    args = (torch.rand(2, 4, V), torch.zeros(2, 3, dtype=torch.int64), None, torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="got 1 generators for a batch of 2 rows"):
        rejection_sample(*args, generators=[None])
    with pytest.raises(ValueError, match=r"num_draft_tokens must have shape \[2\], got shape \(2, 1\)"):
        rejection_sample(*args, num_draft_tokens=torch.ones(2, 1, dtype=torch.int64))
