"""The n-gram proposer on handmade sequences with known answers, and against its rules by brute force."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forgellm.errors import ConfigError
from forgellm.spec_decode import NgramProposer, SpeculativeConfig, ngram

# The proposer keeps its candidates as a mask while many and as a list once few: the rule tests run with
# every switch point, from a list at once (0) to a mask throughout (10**9), as well as the shipped one.
SWITCH_POINTS = [0, ngram.SPARSE_BELOW_FRACTION, 10**9]


@pytest.mark.parametrize(
    ("tokens", "min_n", "max_n", "k", "expected"),
    [
        # tail [1, 2, 3] occurred at 0: the three tokens after it
        ([1, 2, 3, 4, 5, 6, 7, 1, 2, 3], 1, 3, 3, [4, 5, 6]),
        # k caps the proposal
        ([1, 2, 3, 4, 5, 6, 7, 1, 2, 3], 1, 3, 2, [4, 5]),
        # the longest n wins over a more recent shorter match: [2, 3] after 9 (n=2) beats [3] -> 8 (n=1)
        ([2, 3, 4, 5, 3, 8, 9, 2, 3], 1, 3, 2, [4, 5]),
        # ... and max_n is tried first: with max_n=1 only the last token is looked up, most recent wins
        ([2, 3, 4, 5, 3, 8, 9, 2, 3], 1, 1, 2, [8, 9]),
        # among occurrences of the same n, the most recent wins
        ([7, 1, 2, 5, 1, 2, 6, 1, 2], 2, 2, 1, [6]),
        # the proposal stops at the end of the sequence (the occurrence overlaps the tail)
        ([5, 5, 5], 1, 2, 4, [5]),
        ([1, 2, 1, 2, 1], 1, 3, 5, [2, 1]),
        # a match shorter than min_n is no match
        ([1, 2, 3, 4, 5, 9, 3], 2, 3, 3, []),
        # the same sequence with min_n=1 finds it
        ([1, 2, 3, 4, 5, 9, 3], 1, 3, 3, [4, 5, 9]),
        # the tail occurred nowhere before
        ([1, 2, 3, 4], 1, 3, 3, []),
        # sequences too short for any earlier occurrence of n >= min_n tokens
        ([], 1, 3, 3, []),
        ([4], 1, 3, 3, []),
        ([4, 4], 2, 3, 3, []),
        ([4, 4, 4], 2, 3, 3, [4]),
        # max_n longer than the sequence: the longest n that fits is used
        ([8, 9, 8, 9], 1, 10, 2, [8, 9]),
    ],
)
def test_handmade_proposals(tokens: list[int], min_n: int, max_n: int, k: int, expected: list[int]) -> None:
    proposer = NgramProposer(min_n, max_n, k)
    assert proposer.propose(tokens) == expected
    assert proposer.propose(np.array(tokens, dtype=np.int32)) == expected


def test_k_per_call_overrides_and_zero_proposes_nothing() -> None:
    proposer = NgramProposer(1, 3, 2)
    tokens = [1, 2, 3, 4, 5, 6, 1, 2]
    assert proposer.propose(tokens) == [3, 4]
    assert proposer.propose(tokens, k=4) == [3, 4, 5, 6]
    assert proposer.propose(tokens, k=0) == []


def test_propose_batch_takes_a_draft_length_per_request() -> None:
    proposer = NgramProposer(1, 2, 3)
    sequences = [[1, 2, 3, 4, 1, 2], np.array([9, 8, 7]), [5, 6, 7, 8, 5]]
    assert proposer.propose_batch(sequences, [1, 3, 2]) == [[3], [], [6, 7]]
    assert proposer.propose_batch(sequences) == [[3, 4, 1], [], [6, 7, 8]]
    assert proposer.propose_batch([], []) == []
    with pytest.raises(ValueError, match="2 sequences but 1 draft lengths"):
        proposer.propose_batch(sequences[:2], [1])


def test_long_context_finds_the_planted_copy() -> None:
    # 32k distinct-ish tokens with one planted repetition: the tail is a copy of a window near the start.
    rng = np.random.default_rng(0)
    tokens = rng.integers(1000, 100_000, size=32_768)
    tokens[-4:] = [1, 2, 3, 4]
    tokens[100:110] = [1, 2, 3, 4, 11, 12, 13, 14, 15, 16]
    assert NgramProposer(2, 4, 5).propose(tokens) == [11, 12, 13, 14, 15]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 3, 2), "min_n must be a positive integer, got 0"),
        ((1, 0, 2), "max_n must be a positive integer, got 0"),
        ((1, 3, 0), "k must be a positive integer, got 0"),
        ((1, 3, True), "k must be a positive integer, got True"),
        ((1.5, 3, 2), "min_n must be a positive integer, got 1.5"),
        ((3, 2, 2), r"min_n \(3\) must be <= max_n \(2\)"),
    ],
)
def test_bad_proposer_arguments(args: tuple, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        NgramProposer(*args)


def test_proposer_from_config() -> None:
    proposer = NgramProposer.from_config(
        SpeculativeConfig(method="ngram", num_speculative_tokens=5, prompt_lookup_min=1, prompt_lookup_max=3)
    )
    assert (proposer.min_n, proposer.max_n, proposer.k) == (1, 3, 5)
    with pytest.raises(ConfigError, match="needs speculative_config.method ngram, got 'draft_model'"):
        NgramProposer.from_config(SpeculativeConfig(method="draft_model", model="/ckpt"))


def test_a_2d_array_is_refused() -> None:
    with pytest.raises(ValueError, match="1-D"):
        NgramProposer(1, 2, 2).propose(np.zeros((2, 3), dtype=np.int64))


def occurrences(tokens: list[int], n: int) -> list[int]:
    """Start indices i of earlier windows equal to the last n tokens, with a token after them."""
    tail = tokens[len(tokens) - n :]
    return [i for i in range(len(tokens) - n) if tokens[i : i + n] == tail]


# Small alphabets so that tails repeat often; lengths past max_n so every size gets exercised.
sequences = st.lists(st.integers(0, 3), max_size=40)
sizes = st.tuples(st.integers(1, 5), st.integers(0, 3), st.integers(1, 6))


@pytest.mark.parametrize("switch", SWITCH_POINTS)
@settings(max_examples=300, deadline=None)
@given(tokens=sequences, sizes=sizes)
def test_every_proposal_is_the_continuation_of_an_earlier_occurrence(
    switch: int, tokens: list[int], sizes: tuple
) -> None:
    min_n, extra, k = sizes
    max_n = min_n + extra
    with mock.patch.object(ngram, "SPARSE_BELOW_FRACTION", switch):
        proposal = NgramProposer(min_n, max_n, k).propose(tokens)
    found = {n: occurrences(tokens, n) for n in range(min_n, max_n + 1) if n <= len(tokens)}
    if not proposal:
        assert not any(found.values()), "an occurrence existed but nothing was proposed"
        return
    assert any(proposal == tokens[i + n : i + n + k] for n, starts in found.items() for i in starts), (
        "the proposal follows no earlier occurrence of the tail"
    )


@pytest.mark.parametrize("switch", SWITCH_POINTS)
@settings(max_examples=300, deadline=None)
@given(tokens=sequences, sizes=sizes)
def test_the_longest_then_most_recent_occurrence_is_proposed(switch: int, tokens: list[int], sizes: tuple) -> None:
    min_n, extra, k = sizes
    max_n = min_n + extra
    expected: list[int] = []
    for n in range(max_n, min_n - 1, -1):
        starts = occurrences(tokens, n) if n <= len(tokens) else []
        if starts:
            i = max(starts)
            expected = tokens[i + n : i + n + k]
            break
    with mock.patch.object(ngram, "SPARSE_BELOW_FRACTION", switch):
        assert NgramProposer(min_n, max_n, k).propose(tokens) == expected
