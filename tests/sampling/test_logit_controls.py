"""Logit controls as logits processors: logit_bias, allowed_token_ids and bad words, against direct
computations on the logits; their validation; and the pipeline inside the sampler."""

from __future__ import annotations

import pytest
import torch

from forgellm.engine.request import Request
from forgellm.errors import InvalidRequestError
from forgellm.sampling.logits_processors import apply_logits_processors
from forgellm.sampling.sampler import Sampler
from forgellm.sampling.sampling_metadata import SamplingMetadata
from forgellm.sampling_params import SamplingParams

CPU = torch.device("cpu")
V = 12
INF = float("inf")


def request(outputs: list[int] = (), **params: object) -> Request:
    r = Request("r", [1, 2, 3], SamplingParams(**params), max_tokens=16)
    for token in outputs:
        r.append_token(token)
    return r


def processed(logits: torch.Tensor, requests: list[Request], **kwargs: object) -> torch.Tensor:
    meta = SamplingMetadata.from_requests(requests, [None] * len(requests), V, CPU, **kwargs)
    return apply_logits_processors(logits.clone(), meta)


def test_logit_bias_adds_to_its_rows_tokens_only():
    logits = torch.randn(3, V)
    out = processed(logits, [request(logit_bias={2: 5, 7: -100.0}), request(), request(logit_bias={0: 0.5})])
    expected = logits.clone()
    expected[0, 2] += 5.0
    expected[0, 7] -= 100
    expected[2, 0] += 0.5
    torch.testing.assert_close(out, expected)


def test_allowed_token_ids_leave_only_those_tokens():
    logits = torch.randn(2, V)
    out = processed(logits, [request(), request(allowed_token_ids=[3, 5, 11])])
    assert torch.equal(out[0], logits[0])
    assert torch.isfinite(out[1]).nonzero().flatten().tolist() == [3, 5, 11]
    assert torch.equal(out[1, [3, 5, 11]], logits[1, [3, 5, 11]])


def test_bad_words_ban_a_words_last_token_after_its_other_tokens():
    words = [[4], [6, 7], [1, 2, 9]]
    cases = [
        ([], {4}),  # only the single-token word can end here
        ([5, 6], {4, 7}),
        ([3, 1, 2], {4, 9}),
        ([1, 2, 6], {4, 7}),
    ]
    logits = torch.zeros(len(cases), V)
    out = processed(logits, [request(outputs, bad_words_token_ids=words) for outputs, _ in cases])
    for row, (_, banned) in enumerate(cases):
        assert set((out[row] == -INF).nonzero().flatten().tolist()) == banned


def test_a_bad_word_waiting_on_a_token_in_flight_bans_only_when_it_is_that_token():
    """Asynchronous scheduling: the host knows the outputs [1] and one more token is still on the device."""
    words = [[1, 2, 9], [6, 7]]
    requests = [request([1], bad_words_token_ids=words) for _ in range(3)]
    meta = SamplingMetadata.from_requests(requests, [None] * 3, V, CPU, num_prior_outputs=[2, 2, 2])
    meta.last_token_ids = torch.tensor([2, 6, 5])  # the tokens in flight
    out = apply_logits_processors(torch.zeros(3, V), meta)
    assert [set((row == -INF).nonzero().flatten().tolist()) for row in out] == [{9}, {7}, set()]


def test_controls_compose_with_penalties_and_drive_the_sampler():
    logits = torch.zeros(2, V)
    greedy = [
        request([3], temperature=0.0, logit_bias={3: 2.0, 8: 1.0}, presence_penalty=2.0),  # 3: +2 - 2 < 8: +1
        request(temperature=0.0, allowed_token_ids=[5, 6], logit_bias={6: 1.0}, bad_words_token_ids=[[6]]),
    ]
    meta = SamplingMetadata.from_requests(greedy, [None, None], V, CPU)
    assert Sampler()(logits, meta).sampled_token_ids.tolist() == [8, 5]
    sampled = [request(temperature=1.0, allowed_token_ids=[2, 4], bad_words_token_ids=[[4]])] * 64
    meta = SamplingMetadata.from_requests(sampled, [None] * 64, V, CPU)
    assert set(Sampler()(torch.randn(64, V), meta, torch.Generator().manual_seed(0)).sampled_token_ids.tolist()) == {2}


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"logit_bias": {1: 101}}, "logit_bias"),
        ({"logit_bias": {-1: 1.0}}, "logit_bias"),
        ({"logit_bias": {"1": 1.0}}, "logit_bias"),
        ({"logit_bias": {1: float("nan")}}, "logit_bias"),
        ({"allowed_token_ids": []}, "allowed_token_ids"),
        ({"allowed_token_ids": [1, -2]}, "allowed_token_ids"),
        ({"bad_words": ["ok", " "]}, "bad_words"),
        ({"bad_words": "word"}, "bad_words"),
        ({"bad_words_token_ids": [[1], []]}, "bad_words_token_ids"),
    ],
)
def test_bad_values_are_refused_naming_the_field(params: dict, name: str):
    with pytest.raises(InvalidRequestError) as err:
        SamplingParams(**params)
    assert err.value.param == name
