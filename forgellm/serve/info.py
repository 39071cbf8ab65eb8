"""The small routes: /v1/models (and one model), /health, /version, /metrics, /tokenize and /detokenize."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

import forgellm
from forgellm.serve.context import ServerContext, now_seconds
from forgellm.serve.errors import APIError
from forgellm.serve.openapi import (
    BODY_ERRORS,
    DetokenizeResponse,
    HealthResponse,
    ModelCard,
    ModelList,
    TokenizeResponse,
    VersionResponse,
    openapi_extra,
    responses,
)
from forgellm.serve.protocol import ChatCompletionRequest, ChatMessage, DetokenizeRequest, TokenizeRequest


def info_router(ctx: ServerContext, auth: Any) -> APIRouter:
    """Routes that report on the server; /health, /version and /metrics need no API key."""
    router = APIRouter()
    protected = [Depends(auth)]
    started = now_seconds()
    has_key = ctx.settings.api_key is not None

    @router.get("/health", responses=responses(HealthResponse, (503,)))
    async def health() -> Response:
        if not ctx.engine.is_alive:
            return APIError(503, "the engine has failed", type="server_error", code="engine_dead").response()
        return JSONResponse({"status": "ok"})

    @router.get("/version", responses=responses(VersionResponse))
    async def version() -> Response:
        return JSONResponse({"version": forgellm.__version__})

    # A plain route: a mounted ASGI app would answer /metrics with a 307.
    @router.get("/metrics", response_class=PlainTextResponse, responses={200: {"description": "Prometheus metrics"}})
    async def metrics() -> Response:
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @router.get(
        "/v1/models",
        dependencies=protected,
        openapi_extra=openapi_extra(api_key=has_key),
        responses=responses(ModelList, api_key=has_key),
    )
    async def models() -> Response:
        data = [_model_card(ctx, name, started) for name in ctx.settings.served_model_names]
        return JSONResponse({"object": "list", "data": data})

    # `:path`: a served name may hold slashes ("org/model"), as Hugging Face ids do. The schema says
    # which names are served (any other is a 404), as it does for the bodies' `model`; the route
    # reads the parameter itself, so FastAPI documents no 422 it could never send.
    model_id_param = {
        "name": "model_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": list(ctx.settings.served_model_names)},
    }

    @router.get(
        "/v1/models/{model_id:path}",
        dependencies=protected,
        openapi_extra={**openapi_extra(api_key=has_key), "parameters": [model_id_param]},
        responses=responses(ModelCard, (404,), api_key=has_key),
    )
    async def model(request: Request) -> Response:
        model_id = request.path_params["model_id"]
        ctx.check_model(model_id)  # 404 naming the id and the served names
        return JSONResponse(_model_card(ctx, model_id, started))

    @router.post(
        "/tokenize",
        dependencies=protected,
        openapi_extra=openapi_extra(TokenizeRequest, has_key),
        responses=responses(TokenizeResponse, BODY_ERRORS, api_key=has_key),
    )
    async def tokenize(request: Request) -> Response:
        body = await ctx.parse(request, TokenizeRequest)
        ctx.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "give exactly one of prompt or messages", param="prompt")
        if body.messages is not None:
            tokens = await ctx.engine.render_chat(_template_messages(body.messages), body.add_generation_prompt)
        else:
            tokens = await ctx.engine.run_in_pool(ctx.engine.tokenizer.encode, body.prompt, body.add_special_tokens)
        return JSONResponse({"tokens": tokens, "count": len(tokens), "max_model_len": ctx.engine.max_model_len})

    @router.post(
        "/detokenize",
        dependencies=protected,
        openapi_extra=openapi_extra(DetokenizeRequest, has_key),
        responses=responses(DetokenizeResponse, BODY_ERRORS, api_key=has_key),
    )
    async def detokenize(request: Request) -> Response:
        body = await ctx.parse(request, DetokenizeRequest)
        ctx.check_model(body.model)
        vocab = ctx.engine.tokenizer.vocab_size
        bad = next((t for t in body.tokens if not 0 <= t < vocab), None)
        if bad is not None:
            raise APIError(400, f"token id {bad} is outside the vocabulary [0, {vocab})", param="tokens")
        text = await ctx.engine.run_in_pool(ctx.engine.tokenizer.decode, body.tokens)
        return JSONResponse({"prompt": text})

    return router


def _model_card(ctx: ServerContext, name: str, created: int) -> dict[str, Any]:
    """The card of one served name, the same in the list and alone."""
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "forgellm",
        "root": ctx.engine.config.model or name,
        "max_model_len": ctx.engine.max_model_len,
        "quantization": ctx.engine.model_info.quantization,
        "weight_memory_bytes": ctx.engine.model_info.weight_bytes,
        "kv_cache_dtype": ctx.engine.model_info.kv_cache_dtype,
    }


def _template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Check and flatten messages exactly as a chat request would."""
    request = ChatCompletionRequest(messages=messages)
    request.check_supported()
    return request.template_messages()
