"""What generation returns: RequestOutput holding one CompletionOutput per sample."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Logprob:
    """The log-probability of one token, its rank in the distribution (1 = most likely) and its text."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


# One position's logprobs: token id -> Logprob (the chosen token plus the top-k alternatives).
PositionLogprobs = dict[int, Logprob]


@dataclass
class CompletionOutput:
    """One generated sample. `finish_reason` is "stop", "length", "abort", "error" or None while running."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list[PositionLogprobs] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    """Timestamps (time.monotonic seconds) of a request's life, for latency reporting."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None
    num_cached_tokens: int = 0


@dataclass
class RequestOutput:
    """The state of one request: its prompt and the samples generated so far.

    With `delta` set (streams asked for with delta=True) each CompletionOutput holds only what its
    sample gained since the previous output, and a finish_reason only in the output that ends it.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    prompt_logprobs: list[PositionLogprobs | None] | None = None
    metrics: RequestMetrics | None = None
    num_cached_tokens: int = field(default=0)
    delta: bool = False
    error: str | None = None  # set when the engine failed while serving the request (finish_reason "error")


def merge_deltas(older: RequestOutput, newer: RequestOutput) -> RequestOutput:
    """One delta output covering two consecutive ones of the same request (`older` is extended in place).

    A consumer that fell behind reads one merged delta instead of a backlog of small ones.
    """
    for mine, theirs in zip(older.outputs, newer.outputs):
        mine.text += theirs.text
        mine.token_ids.extend(theirs.token_ids)
        if mine.logprobs is not None and theirs.logprobs is not None:
            mine.logprobs.extend(theirs.logprobs)
        mine.cumulative_logprob = theirs.cumulative_logprob
        if theirs.finish_reason is not None:
            mine.finish_reason, mine.stop_reason = theirs.finish_reason, theirs.stop_reason
    older.finished = newer.finished
    older.metrics = newer.metrics
    older.num_cached_tokens = newer.num_cached_tokens
    older.error = newer.error or older.error
    older.prompt_logprobs = newer.prompt_logprobs if newer.prompt_logprobs is not None else older.prompt_logprobs
    return older
