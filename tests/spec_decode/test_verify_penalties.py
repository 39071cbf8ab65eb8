"""Sampling with penalties under speculation keeps the target's distribution, position by position.

One verify step over 20,000 copies of a request (temperature 1, presence and frequency penalties, prior
outputs [2, 2]) with the deterministic draft d1: the first emitted token must follow the penalized
row-0 distribution, and after accepting d1 the second must follow row 1 penalized with d1 counted as an
output. The expected distributions are written out here from the penalty definitions (OpenAI:
logit - presence * [count > 0] - frequency * count), independent of forgellm's penalty code. A verify
step that forgot to count the accepted draft is rejected by the same test.
"""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from forgellm.engine.request import Request
from forgellm.sampling_params import SamplingParams
from forgellm.spec_decode import verify
from forgellm.spec_decode.verify import verify_drafts

VOCAB, SAMPLES, DRAFT, PRESENCE, FREQUENCY = 6, 20_000, 3, 0.7, 0.4
ROW0 = torch.tensor([0.5, 1.0, 1.5, 1.2, 0.1, -0.3])
ROW1 = torch.tensor([0.2, -0.4, 0.9, 1.6, 0.8, 0.0])
PRIOR_OUTPUTS = [2, 2]


def penalized(logits: torch.Tensor, outputs: list[int]) -> torch.Tensor:
    counts = torch.bincount(torch.tensor(outputs), minlength=VOCAB).float()
    return (logits - PRESENCE * (counts > 0).float() - FREQUENCY * counts).softmax(-1)


def emitted_tokens(seed: int) -> torch.Tensor:
    params = SamplingParams(temperature=1.0, presence_penalty=PRESENCE, frequency_penalty=FREQUENCY, max_tokens=10)
    requests = []
    for i in range(SAMPLES):
        request = Request(f"r{i}", [5], params, 10)
        for token in PRIOR_OUTPUTS:
            request.append_token(token)
        requests.append(request)
    logits = torch.stack([ROW0, ROW1]).repeat(SAMPLES, 1)
    generator = torch.Generator().manual_seed(seed)
    return verify_drafts(logits, requests, [[DRAFT]] * SAMPLES, [None] * SAMPLES, generator).token_ids


def p_values(tokens: torch.Tensor) -> tuple[float, float]:
    first = torch.bincount(tokens[:, 0], minlength=VOCAB)
    expected_first = penalized(ROW0, PRIOR_OUTPUTS) * SAMPLES
    accepted = tokens[tokens[:, 0] == DRAFT]
    second = torch.bincount(accepted[:, 1], minlength=VOCAB)
    expected_second = penalized(ROW1, PRIOR_OUTPUTS + [DRAFT]) * accepted.shape[0]
    return chi_square(first, expected_first), chi_square(second, expected_second)


def chi_square(observed: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.double() * observed.sum() / expected.double().sum()  # float32 sums drift by an ulp
    return stats.chisquare(observed.double().numpy(), expected.numpy()).pvalue


def test_each_position_follows_its_penalized_distribution():
    first, second = p_values(emitted_tokens(seed=0))
    assert first > 1e-3 and second > 1e-3


def test_forgetting_the_accepted_draft_in_the_penalties_is_detected(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(verify, "_count_drafts_as_outputs", lambda meta, drafts, width: None)
    first, second = p_values(emitted_tokens(seed=0))
    assert first > 1e-3 and second < 1e-6
