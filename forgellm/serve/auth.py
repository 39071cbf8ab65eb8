"""API-key check: `Authorization: Bearer KEY` on the API routes when the server has a key."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from fastapi import Request

from forgellm.serve.errors import APIError


def api_key_dependency(api_key: str | None) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency that raises a 401 unless the request carries `api_key` (no-op without a key)."""
    expected = api_key.encode() if api_key else None

    async def check_api_key(request: Request) -> None:
        if expected is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken must not tell an attacker how much of the key matched.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            raise APIError(
                401,
                "missing or incorrect API key; send it as 'Authorization: Bearer <key>'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check_api_key
