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
        """The JSON body as `model`; malformed JSON or fields become a 400 naming the field."""
        body = await request.body()
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, "the request body must be a JSON object", code="invalid_json")
        try:
            return model.model_validate(data)
        except pydantic.ValidationError as exc:
            raise validation_error(exc) from None

    async def accept(self, request: Request, model: type[ModelT]) -> tuple[ModelT, SamplingParams]:
        """The checks every generation route makes, in order: parse, model name, engine alive,
        unsupported fields, sampling values, then admission. Returns the body and its sampling params."""
        body = await self.parse(request, model)
        self.check_model(body.model)
        self.check_alive()
        body.check_supported()
        params = body.sampling_params(self.engine.default_sampling_params())
        self.admit()
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

    def admit(self) -> None:
        """429 once --max-waiting-requests sequences are queued and not running (a request with n counts n)."""
        limit = self.settings.max_waiting_requests
        if limit is None:
            return
        waiting = self.engine.num_waiting()
        if waiting >= limit:
            raise APIError(
                429,
                f"the server is at capacity ({waiting} sequences waiting, limit {limit}); retry later",
                type="rate_limit_error",
                code="too_many_waiting_requests",
                headers={"Retry-After": "1"},
            )


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now_seconds() -> int:
    """OpenAI's `created`: Unix time in whole seconds."""
    return int(time.time())
