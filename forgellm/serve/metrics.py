"""ServerMetrics: Prometheus counters and histograms of requests, plus the engine's live gauges.

Each app owns its registry (no process-global one), so several servers, e.g. in tests, never share
counts. Request latencies come from the engine's own timestamps (RequestMetrics), measured from the
moment the engine received the request.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from forgellm.engine.async_engine import AsyncLLM
from forgellm.engine.core import EngineStats
from forgellm.errors import RequestFailedError
from forgellm.outputs import RequestOutput

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)


class EngineStatsCollector(Collector):
    """Reads the engine's gauges at scrape time, so they are never stale and cost nothing between scrapes."""

    def __init__(self, engine: AsyncLLM) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        stats = self.engine.stats()
        gauges = (
            ("forgellm_num_requests_running", "Sequences running in the engine", stats.num_running),
            ("forgellm_num_requests_waiting", "Sequences queued, not yet running", self.engine.num_waiting()),
            ("forgellm_kv_cache_usage_ratio", "Fraction of KV-cache blocks held by requests", stats.kv_cache_usage),
            (
                "forgellm_prefix_cache_hit_rate",
                "Fraction of prompt tokens found in the prefix cache",
                stats.prefix_cache_hit_rate,
            ),
            (
                "forgellm_engine_alive",
                "1 while the engine serves requests, 0 once it has failed",
                float(self.engine.is_alive),
            ),
        )
        for name, documentation, value in gauges:
            yield GaugeMetricFamily(name, documentation, value=value)
        counters = (
            ("forgellm_num_preemptions", "Requests preempted for lack of KV cache", stats.num_preemptions),
            ("forgellm_num_aborted_sequences", "Sequences aborted in the engine", stats.num_aborted),
            ("forgellm_num_failed_sequences", "Sequences failed by an error in an engine step", stats.num_failed),
        )
        for name, documentation, value in counters:
            yield CounterMetricFamily(name, documentation, value=value)
        if stats.num_accepted_per_position:  # speculative decoding is on
            yield from _speculation_metrics(stats)


def _speculation_metrics(stats: EngineStats) -> Iterator[Metric]:
    """Counters of drafted and accepted tokens, per draft position too (acceptance = accepted / verify steps)."""
    counters = (
        ("forgellm_spec_decode_num_verify_steps", "Request steps that verified drafts", stats.num_spec_steps),
        ("forgellm_spec_decode_num_draft_tokens", "Draft tokens verified", stats.num_draft_tokens),
        ("forgellm_spec_decode_num_accepted_tokens", "Draft tokens accepted", stats.num_accepted_tokens),
        ("forgellm_spec_decode_draft_seconds", "Host wall time spent proposing drafts", stats.spec_draft_seconds),
    )
    for name, documentation, value in counters:
        yield CounterMetricFamily(name, documentation, value=value)
    per_position = CounterMetricFamily(
        "forgellm_spec_decode_num_accepted_tokens_per_pos",
        "Drafts accepted at each draft position (position 0 first)",
        labels=["position"],
    )
    for position, count in enumerate(stats.num_accepted_per_position):
        per_position.add_metric([str(position)], count)
    yield per_position


class ServerMetrics:
    """The server's Prometheus registry and the request-level series it records."""

    def __init__(self, engine: AsyncLLM) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.finished = Counter(
            "forgellm_request_finished",
            "Finished choices by finish reason (stop, length, abort, error); a request with n choices counts n",
            ["finish_reason"],
            registry=r,
        )
        self.errors = Counter("forgellm_request_errors", "Error responses by HTTP status", ["status"], registry=r)
        self.prompt_tokens = Counter("forgellm_prompt_tokens", "Prompt tokens of requests", registry=r)
        self.generation_tokens = Counter("forgellm_generation_tokens", "Generated tokens", registry=r)
        self.ttft = Histogram(
            "forgellm_time_to_first_token_seconds", "Time to first token", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.itl = Histogram(
            "forgellm_inter_token_latency_seconds",
            "Time between successive tokens of streamed requests",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "forgellm_time_per_output_token_seconds",
            "Mean time per output token after the first, one observation per request",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "forgellm_e2e_request_latency_seconds",
            "Request latency, arrival to finish",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "forgellm_request_queue_time_seconds",
            "Time from arrival to first scheduling",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        r.register(EngineStatsCollector(engine))

    def render(self) -> bytes:
        """The text exposition format, for GET /metrics."""
        return generate_latest(self.registry)

    def count_error(self, status_code: int) -> None:
        self.errors.labels(str(status_code)).inc()

    async def track(self, outputs: AsyncIterator[RequestOutput]) -> AsyncIterator[RequestOutput]:
        """Pass outputs through, observing inter-token gaps; record the request when it ends or is dropped.

        Outputs may be cumulative or deltas (RequestOutput.delta); token counts and finish reasons
        are kept here, so both describe the request the same way.
        """
        last: RequestOutput | None = None
        counts: list[int] = []  # tokens generated so far, per sample
        reasons: list[str | None] = []  # finish reason, per sample
        prev_tokens, prev_time = 0, None
        failed = False
        async with contextlib.aclosing(outputs):  # type: ignore[type-var]
            try:
                async for out in outputs:
                    if len(counts) != len(out.outputs):
                        counts, reasons = [0] * len(out.outputs), [None] * len(out.outputs)
                    for c in out.outputs:
                        counts[c.index] = counts[c.index] + len(c.token_ids) if out.delta else len(c.token_ids)
                        reasons[c.index] = c.finish_reason or reasons[c.index]
                    tokens = counts[0] if counts else 0
                    now = out.metrics.last_token_time if out.metrics is not None else None
                    if now is not None and prev_time is not None and tokens > prev_tokens:
                        gap = (now - prev_time) / (tokens - prev_tokens)  # spread a coalesced gap evenly
                        for _ in range(tokens - prev_tokens):
                            self.itl.observe(gap)
                    prev_tokens, prev_time, last = tokens, now, out
                    yield out
            except RequestFailedError:
                failed = True
                raise
            finally:
                self._record(last, counts, reasons, "error" if failed else "abort")

    def _record(self, out: RequestOutput | None, counts: list[int], reasons: list[str | None], cut: str) -> None:
        """Count the request's choices by finish reason; `cut` for those that did not finish."""
        if out is None:  # dropped before the engine produced anything for it
            self.finished.labels(cut).inc()
            return
        for reason in reasons:
            self.finished.labels(reason or cut).inc()
        self.generation_tokens.inc(sum(counts))
        self.prompt_tokens.inc(len(out.prompt_token_ids))
        m = out.metrics
        if m is None or not out.finished or m.finished_time is None:
            return  # aborted: its latencies would describe the client, not the server
        self.e2e.observe(m.finished_time - m.arrival_time)
        if m.first_scheduled_time is not None:
            self.queue_time.observe(m.first_scheduled_time - m.arrival_time)
        if m.first_token_time is not None:
            self.ttft.observe(m.first_token_time - m.arrival_time)
            tokens = counts[0] if counts else 0
            if tokens > 1 and m.last_token_time is not None:
                self.tpot.observe((m.last_token_time - m.first_token_time) / (tokens - 1))
