"""Penalties and min_tokens masking, checked against their definitions written in plain Python."""

from __future__ import annotations

import math

import torch

from forgellm.engine.request import Request
from forgellm.sampling.penalties import apply_min_tokens, apply_penalties
from forgellm.sampling.sampler import Sampler
from forgellm.sampling.sampling_metadata import SamplingMetadata
from forgellm.sampling_params import SamplingParams

CPU = torch.device("cpu")


def make_request(
    prompt: list[int], output: list[int] = (), eos: frozenset[int] = frozenset(), **params: object
) -> Request:
    request = Request("r", list(prompt), SamplingParams(**params), max_tokens=16, eos_token_ids=eos)
    for token in output:
        request.append_token(token)
    return request


def metadata(requests: list[Request], vocab_size: int) -> SamplingMetadata:
    return SamplingMetadata.from_requests(requests, [None] * len(requests), vocab_size, CPU)


def penalized_by_hand(logits: list[float], prompt: list[int], output: list[int], params: SamplingParams) -> list[float]:
    result = []
    for token, value in enumerate(logits):
        count = output.count(token)
        if token in prompt or count:
            p = params.repetition_penalty
            value = value / p if value > 0 else value * p
        value -= params.frequency_penalty * count
        value -= params.presence_penalty * (1 if count else 0)
        result.append(value)
    return result


def test_penalties_match_definitions() -> None:
    vocab = 8
    cases = [
        ([1, 2], [2, 3, 3, 7], dict(repetition_penalty=1.5, frequency_penalty=0.5, presence_penalty=0.3)),
        ([0, 0, 5], [5, 5, 5], dict(repetition_penalty=0.8)),
        ([4], [6, 6], dict(frequency_penalty=-1.25)),
        ([3], [1, 3], dict(presence_penalty=1.5, temperature=0.0)),
        ([2], [2], {}),  # no penalty: unchanged
    ]
    torch.manual_seed(0)
    logits = torch.randn(len(cases), vocab) * 3
    requests = [make_request(prompt, output, **params) for prompt, output, params in cases]
    result = apply_penalties(logits, metadata(requests, vocab))
    for row, (request, (prompt, output, _)) in enumerate(zip(requests, cases, strict=True)):
        expected = penalized_by_hand(logits[row].tolist(), prompt, output, request.sampling_params)
        actual = result[row].tolist()
        assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) for a, b in zip(actual, expected, strict=True))


def test_no_penalty_batch_builds_no_count_tensors() -> None:
    meta = metadata([make_request([1, 2], [3]), make_request([4], temperature=0.0)], 8)
    assert meta.no_penalties and meta.output_token_counts is None and meta.prompt_token_mask is None
    logits = torch.randn(2, 8)
    assert apply_penalties(logits, meta) is logits


def test_prompt_mask_only_with_repetition_penalty() -> None:
    meta = metadata([make_request([1, 2], [3], frequency_penalty=0.5)], 8)
    assert meta.output_token_counts is not None and meta.prompt_token_mask is None
    assert meta.output_token_counts[0].tolist() == [0, 0, 0, 1, 0, 0, 0, 0]


def test_penalties_steer_greedy_choice() -> None:
    # Token 0 leads, but it was generated three times: a frequency penalty of 1 moves it below token 1.
    logits = torch.tensor([[5.0, 3.0, 0.0, 0.0]])
    request = make_request([2], [0, 0, 0], temperature=0.0, frequency_penalty=1.0)
    out = Sampler()(logits, metadata([request], 4))
    assert out.sampled_token_ids.tolist() == [1]


def test_min_tokens_masks_eos_and_stop_ids_until_reached() -> None:
    vocab = 6
    logits = torch.zeros(4, vocab)
    requests = [
        make_request([1], [2], eos=frozenset({5}), min_tokens=3, stop_token_ids=[4]),
        make_request([1], [2, 2, 2], eos=frozenset({5}), min_tokens=3, stop_token_ids=[4]),  # reached
        make_request([1], [], eos=frozenset({5}), min_tokens=1, stop_token_ids=[4], ignore_eos=True),
        make_request([1], [], eos=frozenset({5, 99}), min_tokens=2),  # 99 is outside the vocabulary
    ]
    masked = apply_min_tokens(logits, metadata(requests, vocab))
    inf = float("-inf")
    assert masked.tolist() == [
        [0, 0, 0, 0, inf, inf],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, inf, 0],  # ignore_eos: EOS is an ordinary token, the stop token id stays masked
        [0, 0, 0, 0, 0, inf],
    ]


def test_min_tokens_forces_greedy_past_eos() -> None:
    logits = torch.tensor([[0.0, 1.0, 9.0]])
    request = make_request([0], [], eos=frozenset({2}), min_tokens=1, temperature=0.0)
    assert Sampler()(logits, metadata([request], 3)).sampled_token_ids.tolist() == [1]


def test_output_counts_and_prompt_mask_per_row() -> None:
    requests = [
        make_request([0, 0, 4], [1, 1, 2, 1], repetition_penalty=1.2),
        make_request([], [], frequency_penalty=0.1),
        make_request([3], [0, 0]),
    ]
    meta = metadata(requests, 5)
    assert meta.output_token_counts.tolist() == [[0, 3, 1, 0, 0], [0, 0, 0, 0, 0], [2, 0, 0, 0, 0]]
    assert meta.prompt_token_mask.tolist() == [
        [True, False, False, False, True],
        [False] * 5,
        [False, False, False, True, False],
    ]
