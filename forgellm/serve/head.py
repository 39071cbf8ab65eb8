"""HEAD on every GET route: the GET's status and headers, no body (HTTP's meaning of HEAD).

FastAPI's routes answer only the methods they declare, so `HEAD /health`, which load balancers and
uptime checkers send, would be a 405. A middleware serves HEAD as GET for every route at once,
auth and errors included, and drops the body; the routes and /openapi.json's GET operations stay
as they are (head_operations adds their HEAD twins to the schema).
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class HeadAsGetMiddleware:
    """Runs a HEAD request as a GET and sends its status and headers (Content-Length included) alone."""

    def __init__(self, app: Callable[[Message, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] != "HEAD":
            await self.app(scope, receive, _allow_head(send))
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # the body's parts are dropped; the last, empty, ends the response
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_without_body)


def _allow_head(send: Send) -> Send:
    """`send` that adds HEAD to a 405's Allow header wherever it names GET (HEAD is served there too)."""

    async def send_with_head(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 405:
            headers = [
                (name, _with_head(value) if name.lower() == b"allow" else value)
                for name, value in message.get("headers", [])
            ]
            message = {**message, "headers": headers}
        await send(message)

    return send_with_head


def _with_head(allow: bytes) -> bytes:
    methods = [method.strip() for method in allow.split(b",")]
    return allow + b", HEAD" if b"GET" in methods and b"HEAD" not in methods else allow


def head_operations(paths: dict[str, Any]) -> None:
    """Add to each path of an OpenAPI `paths` object with a GET a HEAD operation: the same
    statuses, headers and security, without the bodies."""
    for item in paths.values():
        get = item.get("get")
        if get is None or "head" in item:
            continue
        head = {key: copy.deepcopy(value) for key, value in get.items() if key not in ("responses", "operationId")}
        head["summary"] = f"{get.get('summary', 'GET')}, headers only (HEAD)"
        if "operationId" in get:
            head["operationId"] = f"{get['operationId']}_head"
        head["responses"] = {
            status: {key: value for key, value in response.items() if key != "content"}
            for status, response in get.get("responses", {}).items()
        }
        item["head"] = head
