"""OutputSink: where one request's outputs wait for the coroutine that streams them.

Outputs are put from the engine's thread (or the reader of the engine process) and read on an
event loop. While unread they are merged: a newer cumulative output replaces the older one, delta
outputs are joined. So a slow consumer holds one output, not a backlog that grows every step, and
the loop gets at most one wake-up per request however many steps pass.
"""

from __future__ import annotations

import asyncio
import threading

from forgellm.outputs import RequestOutput, merge_deltas


class OutputSink:
    """A one-slot mailbox of RequestOutputs (merged) and a final error, owned by one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._output: RequestOutput | None = None
        self._error: BaseException | None = None
        self._wake_pending = False
        self._ready = asyncio.Event()  # touched on the loop's thread only

    def put(self, item: RequestOutput | BaseException) -> bool:
        """Hand over an output or a final error (from any thread); False if the loop is closed."""
        with self._lock:
            if isinstance(item, BaseException):
                self._error = self._error or item
            elif self._output is not None and item.delta:
                self._output = merge_deltas(self._output, item)
            else:
                self._output = item
            if self._wake_pending:
                return True
            self._wake_pending = True
        try:
            self.loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop is closed: nobody will read this request
            return False
        return True

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        self._ready.set()

    async def get(self) -> RequestOutput | BaseException:
        """The merged outputs since the last call, else the error; waits until there is one."""
        while True:
            with self._lock:
                output, self._output = self._output, None
                error = self._error if output is None else None
            if output is not None:
                return output
            if error is not None:
                return error
            self._ready.clear()
            await self._ready.wait()
