"""Scoring windows cover a token sequence: each token scored at most once, in order, with context."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forgellm.eval.windows import make_windows


def scored_positions(n: int, window: int, stride: int | None) -> list[int]:
    positions = []
    for w in make_windows(list(range(n)), window, stride):
        positions += w.scored_ids  # ids equal positions here
    return positions


@given(st.integers(0, 300), st.integers(2, 40), st.data())
def test_windows_score_each_token_once_in_order(n: int, window: int, data: st.DataObject) -> None:
    stride = data.draw(st.integers(1, window))
    windows = make_windows(list(range(n)), window, stride)
    positions = scored_positions(n, window, stride)
    assert positions == sorted(set(positions))  # once each, in order
    assert all(len(w.token_ids) <= window and 1 <= w.first_scored < len(w.token_ids) for w in windows)
    if stride < window:
        assert positions == list(range(1, n))  # overlapping windows score everything but token 0
    else:
        assert positions == [i for i in range(1, n) if i % window != 0]  # window starts are context only


def test_non_overlapping_windows_by_default() -> None:
    windows = make_windows(list(range(10)), 4)
    assert [(w.token_ids, w.first_scored) for w in windows] == [
        ([0, 1, 2, 3], 1),
        ([4, 5, 6, 7], 1),
        ([8, 9], 1),
    ]


def test_overlapping_windows_give_later_tokens_context() -> None:
    windows = make_windows(list(range(10)), 4, stride=2)
    assert [(w.token_ids[0], w.first_scored) for w in windows] == [(0, 1), (2, 2), (4, 2), (6, 2)]


@pytest.mark.parametrize(("window", "stride"), [(1, None), (4, 0), (4, 5)])
def test_bad_window_or_stride(window: int, stride: int | None) -> None:
    with pytest.raises(ValueError):
        make_windows([1, 2, 3], window, stride)
