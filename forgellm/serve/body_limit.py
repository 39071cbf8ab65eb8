"""BodyLimitMiddleware: answer 413 to a request body over the limit, before any route reads it.

A plain ASGI middleware (not BaseHTTPMiddleware, which breaks streaming and disconnect detection):
it reads the whole body, counting bytes, then replays it to the app; after the replay `receive`
is the server's own again, so the routes still see `http.disconnect`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from forgellm.serve.errors import APIError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimitMiddleware:
    """Reject HTTP requests whose body exceeds `max_bytes` with an OpenAI-shaped 413."""

    def __init__(self, app: ASGIApp, max_bytes: int, on_reject: Callable[[int], None] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.on_reject = on_reject  # told the status of each rejection (the metrics count errors)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._reject(scope, receive, send, declared)
            return
        chunks: list[bytes] = []
        size = 0
        while True:  # a chunked body declares no length: count it as it arrives
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending the body
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._reject(scope, receive, send, None)
                return
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, declared: int | None) -> None:
        size = f"is {declared} bytes" if declared is not None else "is larger than that"
        error = APIError(
            413,
            f"the request body may be at most {self.max_bytes} bytes and this one {size}; send a smaller body",
            code="request_too_large",
        )
        if self.on_reject is not None:
            self.on_reject(error.status_code)
        await error.response()(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that returns `messages` first, then defers to the server's receive."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
