"""Benchmark statistics against numpy's definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from forgellm.bench.stats import percentile, ratio, summarize


@pytest.mark.parametrize("size", [1, 2, 3, 10, 101, 1000])
def test_percentile_matches_numpy(size: int) -> None:
    values = np.random.default_rng(size).exponential(size=size).tolist()
    for q in (0, 1, 25, 50, 90, 99, 99.9, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12, abs=1e-15)


def test_percentile_ignores_input_order_and_rejects_bad_q() -> None:
    assert percentile([5.0, 1.0, 3.0], 50) == 3.0
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    assert math.isnan(percentile([], 50))


def test_summarize_matches_numpy() -> None:
    values = np.random.default_rng(0).normal(10, 2, size=257).tolist()
    s = summarize(values)
    assert s.count == 257
    assert s.mean == pytest.approx(np.mean(values))
    assert s.std == pytest.approx(np.std(values))
    assert (s.min, s.max) == (min(values), max(values))
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        assert getattr(s, name) == pytest.approx(np.percentile(values, q))


def test_summarize_empty_and_scaled() -> None:
    empty = summarize([])
    assert empty.count == 0 and math.isnan(empty.p99)
    s = summarize([0.001, 0.002, 0.003]).scaled(1000)
    assert s.count == 3
    assert s.p50 == pytest.approx(2.0) and s.max == pytest.approx(3.0)


def test_ratio_guards_zero() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert math.isnan(ratio(1.0, 0.0))
