"""SpeculationGovernor: speculation on or off per batch size, by measured speed (`disable_by_batch_size: "auto"`).

Whether drafting pays depends on the batch: a verify step of k + 1 tokens per request costs little more
than a decode step while the weights' bandwidth bounds it, and up to k + 1 times more once the batch
makes it compute-bound, while the proposer's cost grows with the batch too. So the governor measures:
per bucket of batch sizes (1, 2-3, 4-7, ...), a moving average of tokens emitted per second over
decode-only engine steps, speculating and not. Speculation starts on; after `probe_steps` steps of
each mode the faster runs, and every `probe_interval` steps the other gets `probe_steps` again, as
acceptance and the mix of requests drift. Which steps speculate then depends on timing, so a seeded
request samples reproducibly only under a fixed setting (an integer limit, or none).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Bucket:
    """Measurements of one bucket of batch sizes, keyed by whether the steps speculated."""

    rate: dict[bool, float] = field(default_factory=dict)  # moving average of emitted tokens per second
    samples: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})
    decisions: int = 0  # steps decided after both modes were measured


class SpeculationGovernor:
    """Picks the faster of speculating and plain decoding for each batch size, from the steps it observes."""

    def __init__(self, probe_steps: int = 8, probe_interval: int = 512, smoothing: float = 0.2) -> None:
        if not 0 < probe_steps < probe_interval:
            raise ValueError(f"need 0 < probe_steps < probe_interval, got {probe_steps} and {probe_interval}")
        self.probe_steps = probe_steps
        self.probe_interval = probe_interval
        self.smoothing = smoothing
        self.buckets: dict[int, _Bucket] = {}

    def _bucket(self, batch_size: int) -> _Bucket:
        return self.buckets.setdefault(max(batch_size, 1).bit_length(), _Bucket())

    def should_speculate(self, batch_size: int) -> bool:
        """Whether the next step, of `batch_size` running requests, drafts."""
        bucket = self._bucket(batch_size)
        for mode in (True, False):  # measure speculation first, then plain decoding
            if bucket.samples[mode] < self.probe_steps:
                return mode
        phase = bucket.decisions % self.probe_interval
        bucket.decisions += 1
        faster = bucket.rate[True] >= bucket.rate[False]
        probing = phase >= self.probe_interval - self.probe_steps  # the last probe_steps of every interval
        return faster != probing

    def observe(self, batch_size: int, speculated: bool, num_tokens: int, seconds: float) -> None:
        """A decode-only step of `batch_size` requests emitted `num_tokens` in `seconds` (drafts proposed
        for the next step included)."""
        if num_tokens <= 0 or seconds <= 0:
            return
        bucket = self._bucket(batch_size)
        rate = num_tokens / seconds
        previous = bucket.rate.get(speculated)
        bucket.rate[speculated] = rate if previous is None else previous + self.smoothing * (rate - previous)
        bucket.samples[speculated] += 1

    def summary(self) -> dict[str, dict[str, float]]:
        """Per bucket ("1", "2-3", ...), the measured tokens per second with and without speculation."""
        out = {}
        for bits, bucket in sorted(self.buckets.items()):
            low, high = 1 << (bits - 1), (1 << bits) - 1
            name = str(low) if low == high else f"{low}-{high}"
            out[name] = {("speculating" if mode else "plain"): round(r, 1) for mode, r in bucket.rate.items()}
        return out
