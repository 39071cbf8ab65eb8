"""build_app: the FastAPI application of one engine (no module-level app; each call makes a new one)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

import forgellm
from forgellm.engine.async_engine import AsyncLLM
from forgellm.serve.auth import api_key_dependency
from forgellm.serve.body_limit import BodyLimitMiddleware
from forgellm.serve.chat import chat_router
from forgellm.serve.completions import completions_router
from forgellm.serve.context import ServerContext
from forgellm.serve.errors import install_error_handlers
from forgellm.serve.head import HeadAsGetMiddleware, head_operations
from forgellm.serve.info import info_router
from forgellm.serve.metrics import ServerMetrics
from forgellm.serve.not_found import install_not_found
from forgellm.serve.openapi import BEARER_SCHEME, openapi_schemas
from forgellm.serve.responses import responses_router
from forgellm.serve.settings import ServerSettings


def build_app(engine: AsyncLLM, settings: ServerSettings | None = None) -> FastAPI:
    """An OpenAI-compatible app serving `engine`. The caller owns the engine and shuts it down."""
    settings = settings or ServerSettings()
    ctx = ServerContext(engine, settings, ServerMetrics(engine))
    app = FastAPI(title="forgellm", version=forgellm.__version__, docs_url=None, redoc_url=None)
    app.state.context = ctx  # for callers and tests; routes get ctx from their factory
    auth = api_key_dependency(settings.api_key)
    routers = (chat_router(ctx, auth), completions_router(ctx, auth), info_router(ctx, auth))
    for router in (*routers, responses_router(ctx, auth)):
        app.include_router(router)
    install_error_handlers(app, on_error=ctx.metrics.count_error)
    install_not_found(app, on_error=ctx.metrics.count_error)  # a 404 that lists the routes
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes, on_reject=ctx.metrics.count_error)
    _describe_bodies(app, ctx)
    return app


def _describe_bodies(app: FastAPI, ctx: ServerContext) -> None:
    """Complete app.openapi() with what FastAPI cannot see: the request bodies the routes parse
    themselves (their schemas, which the operations' requestBody refer to) and the API key."""
    settings = ctx.settings

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)  # FastAPI's own, cached in app.openapi_schema
            tokenizer = getattr(ctx.engine, "tokenizer", None)
            vocab_size = getattr(tokenizer, "vocab_size", None)
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {}).update(openapi_schemas(settings.served_model_names, vocab_size))
            head_operations(schema["paths"])  # HeadAsGetMiddleware answers HEAD wherever GET is served
            if settings.api_key is not None:
                components["securitySchemes"] = {BEARER_SCHEME: {"type": "http", "scheme": "bearer"}}
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
