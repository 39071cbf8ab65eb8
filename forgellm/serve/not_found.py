"""A 404 for a path no route serves, whose message lists the routes (method and path) that are served."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from forgellm.serve.errors import APIError

# The operations a path item may hold (it may also hold "parameters", "summary", ...); not HEAD.
_METHODS = {"get", "put", "post", "delete", "options", "patch", "trace"}


def served_routes(app: FastAPI) -> list[str]:
    """'METHOD /path' for every operation /openapi.json documents (path parameters as {name}), and
    /openapi.json itself; HEAD is left out, as it is served wherever GET is (HeadAsGetMiddleware).

    Read from the schema, not app.routes: FastAPI keeps included routers there as lazy wrappers.
    """
    paths = app.openapi().get("paths", {})
    entries = {(path, method.upper()) for path, item in paths.items() for method in item if method in _METHODS}
    entries.add((app.openapi_url or "/openapi.json", "GET"))
    return [f"{method} {path}" for path, method in sorted(entries)]


def install_not_found(app: FastAPI, on_error: Callable[[int], Any] | None = None) -> None:
    """Answer Starlette's 404 (no route matched) in OpenAI's shape, naming what was asked and what is served.

    A status handler: it takes precedence over the HTTPException handler of errors.py for 404 only,
    so a 405 keeps its Allow header. `on_error(404)` is called for each (the metrics count errors).
    """
    routes: list[str] = []  # filled at the first 404: every router is included by then

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        if not routes:
            routes.extend(served_routes(app))
        detail = exc.detail if isinstance(exc, HTTPException) else "Not Found"
        message = (
            f"{detail}: no route serves {request.method} {request.url.path}; "
            f"this server serves {', '.join(routes)} (HEAD too wherever GET is served)"
        )
        if on_error is not None:
            on_error(404)
        return APIError(404, message, code="not_found").response()

    app.add_exception_handler(404, handle)
