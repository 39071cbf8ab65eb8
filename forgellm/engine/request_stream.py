"""RequestStream: the outputs of one admitted request, as an async iterator its caller owns.

Leaving it before the end aborts the request in the engine, however it is left: `aclose()` (also
before the first output), cancellation while waiting for an output, an exception, or dropping the
stream (a `break` out of `async for`).
"""

from __future__ import annotations

from collections.abc import Callable

from forgellm.engine.output_sink import OutputSink
from forgellm.errors import RequestFailedError
from forgellm.outputs import RequestOutput


class RequestStream:
    """Async iterator of a request's RequestOutputs; raises the error that ended it, if any."""

    def __init__(self, sink: OutputSink, abort: Callable[[], None]) -> None:
        self._sink = sink
        self._abort = abort  # thread-safe and idempotent: it only queues an abort command
        self._finished = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._finished:
            raise StopAsyncIteration
        try:
            item = await self._sink.get()
        except BaseException:  # cancelled while waiting: the caller is leaving
            self._leave()
            raise
        if isinstance(item, BaseException):
            self._finished = True  # the engine ended it (or died): nothing left to abort
            raise item
        if item.error is not None:
            self._finished = item.finished
            self._leave()  # samples that did not fail would go on for nobody
            raise RequestFailedError(item.error)
        self._finished = item.finished
        return item

    async def aclose(self) -> None:
        """Stop reading: abort the request unless it has finished."""
        self._leave()

    def _leave(self) -> None:
        if not self._finished:
            self._finished = True
            self._abort()

    def __del__(self) -> None:
        self._leave()
