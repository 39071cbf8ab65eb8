"""Server-sent events: framing, and a response that stops (and aborts) its stream when the client leaves."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from starlette.background import BackgroundTask
from starlette.responses import Response

from forgellm.serve.disconnect import wait_for_disconnect

logger = logging.getLogger(__name__)

DONE_EVENT = b"data: [DONE]\n\n"
Message = MutableMapping[str, Any]


def sse_event(payload: dict[str, Any]) -> bytes:
    """One `data: {...}` event; compact JSON keeps the per-token overhead small."""
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


# What a stream cut by the server's shutdown ends with (OpenAI's error shape, then [DONE]).
SHUTDOWN_EVENTS = (
    sse_event(
        {
            "error": {
                "message": "the server is shutting down; retry the request",
                "type": "server_error",
                "param": None,
                "code": "server_shutting_down",
            }
        }
    )
    + DONE_EVENT
)


class EventStreamResponse(Response):
    """An ASGI response sending `events` as text/event-stream, status 200.

    It watches for `http.disconnect` while streaming and, whichever comes first, closes the event
    iterator in `finally`, so the generator's own `finally` aborts its engine requests at once,
    whether the server cancels handlers on disconnect (ASGI < 2.4) or only fails their sends.
    """

    def __init__(self, events: AsyncIterator[bytes]) -> None:
        # A Response subclass so FastAPI passes it through; Response.__init__ would want a body.
        self.events = events
        self.status_code = 200
        self.background: BackgroundTask | None = None

    async def __call__(
        self, scope: Message, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        streamer = asyncio.ensure_future(self._stream(send))
        watcher = asyncio.ensure_future(wait_for_disconnect(receive))
        cut = False
        try:
            await asyncio.wait({streamer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # The server's graceful shutdown ran out of time and cancels this response: end the
            # stream with an error event instead of letting the cancellation escape as a traceback.
            cut = True
        finally:
            for task in (streamer, watcher):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(streamer, watcher, return_exceptions=True)
            with contextlib.suppress(asyncio.CancelledError):
                await self.events.aclose()  # type: ignore[attr-defined]  # aborts its engine requests
        if cut:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await send({"type": "http.response.body", "body": SHUTDOWN_EVENTS, "more_body": False})
            return
        if streamer.done() and not streamer.cancelled() and streamer.exception() is not None:
            # The events themselves report errors as SSE events; this is a bug or a broken socket.
            logger.warning("event stream ended with an error", exc_info=streamer.exception())
        if self.background is not None:
            await self.background()

    async def _stream(self, send: Callable[[Message], Awaitable[None]]) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # proxies such as nginx must not buffer the tokens
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async for event in self.events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
