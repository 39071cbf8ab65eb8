"""What `bench serve` measured: per-request timings, their summary, the table, the JSON and the plot."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from forgellm.bench import report
from forgellm.bench.stats import Summary, ratio, summarize

_MS = 1000.0


@dataclass
class RequestResult:
    """One request as the client saw it (seconds, perf_counter clock)."""

    prompt_len: int
    start: float
    ok: bool = False
    output_len: int = 0  # generated tokens: the server's usage if it reports it, else content chunks
    ttft: float | None = None  # start -> first content
    latency: float | None = None  # start -> last byte
    itl: list[float] = field(default_factory=list)  # gaps between content chunks
    error: str | None = None

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first."""
        if self.ttft is None or self.latency is None or self.output_len < 2:
            return None
        return (self.latency - self.ttft) / (self.output_len - 1)


@dataclass(frozen=True)
class ServeSummary:
    """Totals and latency distributions (milliseconds) of one load run."""

    duration_s: float
    completed: int
    failed: int
    prompt_tokens: int
    output_tokens: int
    ttft_ms: Summary
    tpot_ms: Summary
    itl_ms: Summary
    e2e_ms: Summary
    errors: list[str]

    @property
    def requests_per_s(self) -> float:
        return ratio(self.completed, self.duration_s)

    @property
    def output_tok_s(self) -> float:
        return ratio(self.output_tokens, self.duration_s)

    @property
    def total_tok_s(self) -> float:
        return ratio(self.prompt_tokens + self.output_tokens, self.duration_s)

    def as_dict(self) -> dict[str, Any]:
        return {
            "duration_s": self.duration_s,
            "completed": self.completed,
            "failed": self.failed,
            "requests_per_s": self.requests_per_s,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "output_tok_s": self.output_tok_s,
            "total_tok_s": self.total_tok_s,
            "ttft_ms": self.ttft_ms.as_dict(),
            "tpot_ms": self.tpot_ms.as_dict(),
            "itl_ms": self.itl_ms.as_dict(),
            "e2e_ms": self.e2e_ms.as_dict(),
            "errors": self.errors[:20],
        }


def summarize_run(results: list[RequestResult], duration_s: float) -> ServeSummary:
    """Aggregate the successful requests; failures are counted and their first messages kept."""
    ok = [r for r in results if r.ok]

    def ms(values: list[float | None]) -> Summary:
        return summarize([v * _MS for v in values if v is not None])

    return ServeSummary(
        duration_s=duration_s,
        completed=len(ok),
        failed=len(results) - len(ok),
        prompt_tokens=sum(r.prompt_len for r in ok),
        output_tokens=sum(r.output_len for r in ok),
        ttft_ms=ms([r.ttft for r in ok]),
        tpot_ms=ms([r.tpot for r in ok]),
        itl_ms=ms([gap for r in ok for gap in r.itl]),
        e2e_ms=ms([r.latency for r in ok]),
        errors=[r.error for r in results if r.error is not None],
    )


def format_summary(summary: ServeSummary, facts: dict[str, Any]) -> str:
    """The header (setup), the totals and one row per latency metric: mean, p50, p90, p99."""
    totals = [
        ("successful requests", report.fmt(summary.completed)),
        ("failed requests", report.fmt(summary.failed)),
        ("duration (s)", report.fmt(summary.duration_s)),
        ("requests/s", report.fmt(summary.requests_per_s)),
        ("output tokens/s", report.fmt(summary.output_tok_s)),
        ("total tokens/s", report.fmt(summary.total_tok_s)),
    ]
    rows = [
        [name, *(report.fmt(getattr(s, k)) for k in ("mean", "p50", "p90", "p99"))]
        for name, s in (
            ("TTFT (ms)", summary.ttft_ms),
            ("TPOT (ms)", summary.tpot_ms),
            ("ITL (ms)", summary.itl_ms),
            ("E2E (ms)", summary.e2e_ms),
        )
    ]
    parts = [
        report.format_header("forgellm bench serve", facts),
        report.format_table(["total", "value"], totals),
        report.format_table(["latency", "mean", "p50", "p90", "p99"], rows),
    ]
    if summary.errors:
        parts.append("first error: " + summary.errors[0])
    return "\n\n".join(parts)


def plot(results: list[RequestResult], path: str) -> bool:
    """Histograms of TTFT, ITL and E2E plus E2E over time, as a PNG; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on servers
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [r for r in results if r.ok]
    t0 = min((r.start for r in ok), default=0.0)
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    panels = (
        (axes[0][0], [r.ttft * _MS for r in ok if r.ttft is not None], "TTFT (ms)"),
        (axes[0][1], [g * _MS for r in ok for g in r.itl], "inter-token latency (ms)"),
        (axes[1][0], [r.latency * _MS for r in ok if r.latency is not None], "end-to-end latency (ms)"),
    )
    for ax, values, title in panels:
        ax.hist([v for v in values if math.isfinite(v)], bins=50)
        ax.set_title(title)
        ax.set_ylabel("count")
    scatter = axes[1][1]
    scatter.scatter([r.start - t0 for r in ok], [(r.latency or 0) * _MS for r in ok], s=6)
    scatter.set_title("end-to-end latency by start time")
    scatter.set_xlabel("request start (s)")
    scatter.set_ylabel("ms")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
