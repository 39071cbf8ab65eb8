"""ServerContext: what every route needs (engine, settings, metrics) and the checks they share."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import TypeVar

import pydantic
from fastapi import Request

from forgellm.engine.async_engine import AsyncLLM
from forgellm.sampling_params import SamplingParams
from forgellm.serve.errors import APIError, validation_error
from forgellm.serve.metrics import ServerMetrics
from forgellm.serve.settings import ServerSettings

ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)


@dataclass
class ServerContext:
    """Passed to the route factories: no module-level state anywhere in the server."""

    engine: AsyncLLM
    settings: ServerSettings
    metrics: ServerMetrics

    async def parse(self, request: Request, model: type[ModelT]) -> ModelT:
        """The JSON body as `model`; malformed JSON or fields become a 400 naming the field.

        NaN and Infinity are not JSON (Python's parser takes them by default): they are refused
        here, before any number can reach the engine.
        """
        body = await request.body()
        try:
            data = json.loads(body, parse_constant=_reject_constant)
        except (json.JSONDecodeError, UnicodeDecodeError, _NonFiniteNumber) as exc:
            raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
        except RecursionError:
            raise APIError(400, "the request body is nested too deeply", code="invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, "the request body must be a JSON object", code="invalid_json")
        try:
            return model.model_validate(data)
        except pydantic.ValidationError as exc:
            raise validation_error(exc) from None

    async def accept(self, request: Request, model: type[ModelT]) -> tuple[ModelT, SamplingParams]:
        """The checks every generation route makes, in order: parse, model name, engine alive,
        unsupported fields, sampling values. Admission (queue room, lengths) is the engine's."""
        body = await self.parse(request, model)
        self.check_model(body.model)
        self.check_alive()
        body.check_supported()
        params = body.sampling_params(self.engine.default_sampling_params())
        return body, params

    def check_model(self, name: str | None) -> None:
        """404 unless `name` is one of the served names (no name means the served model)."""
        if name is not None and name not in self.settings.served_model_names:
            raise APIError(
                404,
                f"the model {name!r} does not exist; this server serves {list(self.settings.served_model_names)}",
                param="model",
                code="model_not_found",
            )

    def check_alive(self) -> None:
        if not self.engine.is_alive:
            raise APIError(503, "the engine has failed and serves no requests", type="server_error", code="engine_dead")

    def check_prompt_count(self, num_prompts: int, n: int) -> None:
        """400 for more prompts than --max-prompts-per-request, or more sequences than may ever wait."""
        limit = self.settings.max_prompts_per_request
        if num_prompts > limit:
            raise APIError(
                400,
                f"the request has {num_prompts} prompts but at most {limit} are allowed (--max-prompts-per-request)",
                param="prompt",
                code="too_many_prompts",
            )
        waiting = self.engine.max_waiting_requests
        if waiting is not None and num_prompts * n > waiting:
            raise APIError(
                400,
                f"the request asks for {num_prompts * n} sequences ({num_prompts} prompts x n={n}) but at most "
                f"{waiting} may wait (--max-waiting-requests); send fewer prompts or a smaller n",
                param="n",
                code="too_many_sequences",
            )

    def request_id(self, request: Request, prefix: str) -> str:
        """The request's id: `prefix-` + the caller's X-Request-Id header if given, else a random one."""
        given = request.headers.get("x-request-id")
        if given is None:
            return f"{prefix}-{uuid.uuid4().hex}"
        if not 0 < len(given) <= _MAX_REQUEST_ID_CHARS or not given.isprintable():
            raise APIError(
                400,
                f"the X-Request-Id header must be 1 to {_MAX_REQUEST_ID_CHARS} printable characters",
                param="X-Request-Id",
                code="invalid_value",
            )
        return f"{prefix}-{given}"


_MAX_REQUEST_ID_CHARS = 256


class _NonFiniteNumber(ValueError):
    pass


def _reject_constant(name: str) -> float:
    raise _NonFiniteNumber(f"{name} is not a JSON number; send a finite number")


def now_seconds() -> int:
    """OpenAI's `created`: Unix time in whole seconds."""
    return int(time.time())
