"""Summary statistics of measured samples: mean, percentiles (numpy's linear interpolation)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), interpolating linearly between ranks like numpy's default."""
    if not values:
        return math.nan
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; NaN for no samples (a report shows 'n/a' rather than crashing)."""
    return math.fsum(values) / len(values) if values else math.nan


@dataclass(frozen=True)
class Summary:
    """Distribution of one measured quantity, in the unit it was measured in."""

    count: int
    mean: float
    std: float
    min: float
    p50: float
    p90: float
    p99: float
    max: float

    def as_dict(self) -> dict[str, float]:
        """Plain dict for JSON output."""
        return asdict(self)

    def scaled(self, factor: float) -> Summary:
        """The same distribution in another unit (e.g. seconds -> milliseconds with 1000)."""
        values = {k: v * factor for k, v in asdict(self).items() if k != "count"}
        return Summary(count=self.count, **values)


def summarize(values: Sequence[float]) -> Summary:
    """Summary of `values`; every field is NaN (count 0) when there are none."""
    if not values:
        nan = math.nan
        return Summary(0, nan, nan, nan, nan, nan, nan, nan)
    avg = mean(values)
    # Population standard deviation (numpy's default, ddof=0).
    std = math.sqrt(math.fsum((v - avg) ** 2 for v in values) / len(values))
    return Summary(
        count=len(values),
        mean=avg,
        std=std,
        min=min(values),
        p50=percentile(values, 50),
        p90=percentile(values, 90),
        p99=percentile(values, 99),
        max=max(values),
    )


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN instead of a ZeroDivisionError (e.g. p99/p50 with no samples)."""
    return numerator / denominator if denominator else math.nan
