"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the right status."""

from __future__ import annotations

import json
import logging
from typing import Any

import pydantic
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from forgellm.errors import (
    CapacityError,
    ContextLengthError,
    EngineDeadError,
    ForgeLLMError,
    InvalidRequestError,
    QueueFullError,
    RequestFailedError,
)

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error answered to the client as an OpenAI error body with `status_code`."""

    def __init__(
        self,
        status_code: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """The JSON body OpenAI clients parse."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status_code, headers=self.headers)


def api_error_from(exc: BaseException) -> APIError:
    """Map any exception to the APIError a client should see (unexpected ones become a plain 500)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ContextLengthError):
        return APIError(400, str(exc), param=exc.param, code="context_length_exceeded")
    if isinstance(exc, InvalidRequestError):
        return APIError(400, str(exc), param=exc.param, code="invalid_value")
    if isinstance(exc, QueueFullError):  # full now; the same request may pass later
        return APIError(
            429, str(exc), type="rate_limit_error", code="too_many_waiting_requests", headers={"Retry-After": "1"}
        )
    if isinstance(exc, CapacityError):  # this request could never fit in the KV cache, however idle
        return APIError(400, str(exc), param="max_tokens", code="request_too_large")
    if isinstance(exc, EngineDeadError):
        return APIError(503, str(exc), type="server_error", code="engine_dead")
    if isinstance(exc, RequestFailedError):  # the engine failed this request alone and serves on
        return APIError(500, str(exc), type="server_error", code="request_failed")
    if isinstance(exc, pydantic.ValidationError):
        return validation_error(exc)
    if isinstance(exc, HTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        # Starlette's headers (e.g. Allow on a 405) go out with the error.
        headers = dict(exc.headers) if exc.headers else None
        return APIError(exc.status_code, str(exc.detail), code=codes.get(exc.status_code), headers=headers)
    logger.error("internal error while serving a request", exc_info=exc)
    return APIError(500, f"internal server error: {type(exc).__name__}", type="server_error", code="internal_error")


def validation_error(exc: pydantic.ValidationError) -> APIError:
    """A 400 naming the first invalid field (as a dotted path) and why it is invalid.

    A wrong JSON type says which type was expected and which was sent (the models are strict).
    """
    first = exc.errors()[0]
    param = ".".join(str(part) for part in first["loc"] if not _is_union_member(part)) or None
    if first["type"] == "extra_forbidden":
        message = f"unrecognized request field {param!r}; this server does not support it"
    elif first["type"] == "missing":
        message = f"field {param!r} is required"
    else:
        reason = first["msg"]
        if first["type"].endswith("_type"):  # int_type, bool_type, string_type, list_type, ...
            reason = f"{reason}, got {_json_type(first.get('input'))}"
        message = f"invalid value for {param!r}: {reason}" if param else reason
    return APIError(400, message, param=param, code="invalid_value")


# Where a field is a union ("stop": a string or a list of strings), pydantic's error locations name
# the member that failed ("stop.str", "prompt.list[int].0"): not a field a client could find.
_SCALAR_MEMBERS = {"str", "int", "float", "bool", "dict", "list", "none"}


def _is_union_member(part: str | int) -> bool:
    return isinstance(part, str) and (part in _SCALAR_MEMBERS or "[" in part)


def _json_type(value: Any) -> str:
    """The JSON type of a parsed value, as the client wrote it (true is a boolean, 1.0 a number)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return "a string" if len(value) > 40 else f"the string {json.dumps(value)}"
    return "an array" if isinstance(value, list) else "an object"


def install_error_handlers(app: FastAPI, on_error: Any = None) -> None:
    """Answer every error, Starlette's own 404/405 included, in OpenAI's shape.

    `on_error(status_code)` is called for each error response (the metrics count them).
    """

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        error = api_error_from(exc)
        if on_error is not None:
            on_error(error.status_code)
        return error.response()

    # Typed errors are handled like HTTPException (no traceback); a plain Exception is a bug: 500 + log.
    for kind in (APIError, HTTPException, ForgeLLMError, pydantic.ValidationError, Exception):
        app.add_exception_handler(kind, handle)
