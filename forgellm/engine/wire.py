"""What crosses the pipe between ProcessAsyncLLM and its engine process, as plain tuples.

Outputs travel without their prompt (the server process holds it), so a message costs little and
stays flat as outputs grow. Errors travel as (class name, message, param) and come back as the same
forgellm error class: an exception object is never pickled, so no exception type can break the
server's reader by failing to unpickle.
"""

from __future__ import annotations

from typing import Any

from forgellm import errors
from forgellm.outputs import CompletionOutput, RequestMetrics, RequestOutput

ErrorWire = tuple[str, str, str | None]


def encode_output(out: RequestOutput) -> tuple:
    """A RequestOutput as plain tuples, without the prompt."""
    m = out.metrics
    metrics = None
    if m is not None:
        metrics = (
            m.arrival_time,
            m.first_scheduled_time,
            m.first_token_time,
            m.last_token_time,
            m.finished_time,
            m.num_cached_tokens,
        )
    samples = [
        (c.index, c.text, c.token_ids, c.cumulative_logprob, c.logprobs, c.finish_reason, c.stop_reason)
        for c in out.outputs
    ]
    return (
        out.request_id,
        out.finished,
        out.delta,
        samples,
        metrics,
        out.num_cached_tokens,
        out.prompt_logprobs,
        out.error,
    )


def wire_request_id(wire: tuple) -> str:
    return wire[0]


def decode_output(wire: tuple, request_id: str, prompt: str | None, prompt_token_ids: list[int]) -> RequestOutput:
    """The RequestOutput of `wire`, under the caller's `request_id` and with the prompt put back."""
    _, finished, delta, samples, metrics, num_cached, prompt_logprobs, error = wire
    return RequestOutput(
        request_id=request_id,
        prompt=prompt,
        prompt_token_ids=prompt_token_ids,
        outputs=[CompletionOutput(*s) for s in samples],
        finished=finished,
        prompt_logprobs=prompt_logprobs,
        metrics=RequestMetrics(*metrics) if metrics is not None else None,
        num_cached_tokens=num_cached,
        delta=delta,
        error=error,
    )


def encode_error(exc: BaseException) -> ErrorWire:
    return (type(exc).__name__, str(exc), getattr(exc, "param", None))


def decode_error(wire: Any) -> errors.ForgeLLMError:
    """The forgellm error a wire error names; anything unexpected becomes a RequestFailedError."""
    try:
        name, message, param = wire
        kind = getattr(errors, str(name), None)
        message = str(message)
    except (TypeError, ValueError):
        return errors.RequestFailedError(f"the engine process sent a malformed error: {wire!r}")
    if isinstance(kind, type) and issubclass(kind, errors.InvalidRequestError):
        return kind(message, param)
    if isinstance(kind, type) and issubclass(kind, errors.ForgeLLMError):
        return kind(message)
    return errors.RequestFailedError(f"{name}: {message}")
