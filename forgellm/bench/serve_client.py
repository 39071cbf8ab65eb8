"""A minimal asyncio HTTP/1.1 client for load generation: JSON GET, and POST with an SSE response.

Plain asyncio streams rather than an HTTP library: the benchmark needs no package beyond the core,
and the client's own per-chunk cost stays small and in plain view. One connection per request
(`Connection: close`), so no pool state is shared between requests.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class HTTPStatusError(Exception):
    """The server answered with a status other than 200; `body` is its (truncated) text."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class Server:
    """Where to send requests: scheme, host, port, the base path (e.g. '/v1' or ''), an API key."""

    host: str
    port: int
    base_path: str
    tls: bool = False
    api_key: str | None = None

    @classmethod
    def from_url(cls, url: str, api_key: str | None = None) -> Server:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected a base URL such as http://127.0.0.1:8000, got {url!r}")
        tls = parts.scheme == "https"
        return cls(parts.hostname, parts.port or (443 if tls else 80), parts.path.rstrip("/"), tls, api_key)

    def _head(self, method: str, path: str, body_len: int | None) -> bytes:
        lines = [f"{method} {self.base_path}{path} HTTP/1.1", f"Host: {self.host}:{self.port}", "Connection: close"]
        if body_len is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {body_len}"]
        if self.api_key:
            lines.append(f"Authorization: Bearer {self.api_key}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def _open(self, method: str, path: str, body: bytes | None) -> tuple[asyncio.StreamReader, Any, int, dict]:
        context = ssl.create_default_context() if self.tls else None
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=context, limit=2**22)
        writer.write(self._head(method, path, None if body is None else len(body)) + (body or b""))
        await writer.drain()
        status_line = await reader.readline()
        try:
            status = int(status_line.split()[1])
        except (IndexError, ValueError):
            writer.close()
            raise HTTPStatusError(0, f"not an HTTP response: {status_line[:100]!r}") from None
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return reader, writer, status, headers

    async def get_json(self, path: str) -> Any:
        """GET `path` and parse the JSON body (raises HTTPStatusError unless 200)."""
        reader, writer, status, headers = await self._open("GET", path, None)
        try:
            body = b"".join([chunk async for chunk in _body(reader, headers)])
        finally:
            writer.close()
        if status != 200:
            raise HTTPStatusError(status, body.decode(errors="replace"))
        return json.loads(body)

    async def post_events(self, path: str, payload: dict[str, Any]) -> AsyncIterator[bytes]:
        """POST `payload` as JSON and yield the data of each server-sent event as it arrives."""
        reader, writer, status, headers = await self._open("POST", path, json.dumps(payload).encode())
        try:
            if status != 200:
                body = b"".join([chunk async for chunk in _body(reader, headers)])
                raise HTTPStatusError(status, body.decode(errors="replace"))
            pending = b""
            async for chunk in _body(reader, headers):
                pending += chunk
                *events, pending = pending.split(b"\n\n")
                for event in events:
                    for line in event.splitlines():
                        if line.startswith(b"data:"):
                            yield line[5:].strip()
        finally:
            writer.close()


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> AsyncIterator[bytes]:
    """The response body as it arrives: chunked, Content-Length, or until the server closes."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                return
            data = await reader.readexactly(size + 2)  # the chunk and its CRLF
            yield data[:-2]
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        while chunk := await reader.read(2**16):
            yield chunk
