"""The OpenAPI description (/openapi.json) of what the routes parse by hand and answer.

The routes read bodies themselves (ServerContext.parse) and build plain dicts, so FastAPI sees no
models: each route's `openapi_extra` and `responses` come from here, and `openapi_schemas` gives the
components they refer to, so that clients and fuzzers (tests/serve/test_fuzz.py) see the real API.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from forgellm.serve.protocol import (
    VOCAB_MARKER,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from forgellm.serve.responses_openapi import ResponseStreamEvent
from forgellm.serve.responses_protocol import ResponsesRequest

# Responses, for /openapi.json only (the routes build plain dicts).


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error, in OpenAI's shape (errors.APIError.body); also a stream's `error` event."""

    error: ErrorInfo


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None
    finish_reason: str | None
    stop_reason: int | str | None = None
    prompt_logprobs: list[dict[str, Any] | None] | None = None  # vLLM's, when the request set it


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunk(BaseModel):
    """One event of a streamed completion: with include_usage a last one, with no choices, carries
    the usage (the others usage: null); with continuous_usage_stats every one carries the usage so far."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: dict[str, Any] | None
    finish_reason: str | None
    stop_reason: int | str | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    prompt_logprobs: list[dict[str, Any] | None] | None = None  # vLLM's, when the request set it


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: dict[str, Any] | None
    finish_reason: str | None
    stop_reason: int | str | None = None


class ChatCompletionChunk(BaseModel):
    """One event of a streamed chat completion: with include_usage a last one, with no choices, carries
    the usage (the others usage: null); with continuous_usage_stats every one carries the usage so far."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str
    max_model_len: int
    quantization: str | None = Field(description="the weights' quantization scheme; null when not quantized")
    weight_memory_bytes: int = Field(description="memory the loaded weights take, quantized buffers included")
    kv_cache_dtype: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeResponse(BaseModel):
    prompt: str


class HealthResponse(BaseModel):
    status: str


class VersionResponse(BaseModel):
    version: str


# Why each error status is answered (a route lists the statuses it can answer).
_ERRORS = {
    400: "invalid request: malformed JSON, a bad or unsupported field, a prompt that does not fit",
    401: "missing or wrong API key (only when the server has one)",
    404: "the model is not one the server serves",
    413: "the request body is over --max-request-bytes",
    429: "the engine's waiting queue is full; retry after Retry-After seconds",
    500: "the engine failed this request alone (finish_reason error); it serves on",
    503: "the engine has died, or the server is shutting down",
}
BODY_ERRORS = (400, 404, 413)  # what any route that reads a body may answer
GENERATION_ERRORS = (*BODY_ERRORS, 429, 500, 503)
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "string"}}}
BEARER_SCHEME = "bearer"  # the name of the API-key security scheme in components/securitySchemes


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _event_stream(chunk: type[BaseModel]) -> dict[str, Any]:
    """An SSE media type: each event's data is a `chunk` or an error (both JSON), the last is [DONE].

    Before OpenAPI 3.2 (itemSchema), `schema` of text/event-stream describes one event.
    """
    payload = {
        "contentMediaType": "application/json",
        "contentSchema": {"anyOf": [_ref(chunk.__name__), _ref("ErrorResponse")]},
    }
    data = {"type": "string", "if": {"const": "[DONE]"}, "else": payload}
    return {"schema": {"type": "object", "required": ["data"], "properties": {"data": data}}}


def openapi_extra(body: type[BaseModel] | None = None, api_key: bool = False) -> dict[str, Any]:
    """A route's `openapi_extra`: the JSON body it parses as `body` (see openapi_schemas), and the
    bearer API key it needs when the server has one."""
    extra: dict[str, Any] = {}
    if body is not None:
        content = {"application/json": {"schema": _ref(body.__name__)}}
        extra["requestBody"] = {"required": True, "content": content}
    if api_key:
        extra["security"] = [{BEARER_SCHEME: []}]
    return extra


def responses(
    ok: type[BaseModel],
    errors: tuple[int, ...] = (),
    stream: type[BaseModel] | None = None,
    api_key: bool = False,
) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses`: `ok` as the 200 body (or with stream: true an event stream of `stream`
    chunks), and the error statuses, 401 included when the server has an API key."""
    ok_response: dict[str, Any] = {"model": ok, "description": "the result"}
    if stream is not None:
        ok_response["description"] = "the result, or with stream: true an event stream of chunks ending in [DONE]"
        ok_response["content"] = {"text/event-stream": _event_stream(stream)}
    table: dict[int | str, dict[str, Any]] = {200: ok_response}
    for status in sorted({*errors, *((401,) if api_key else ())}):
        table[status] = {"model": ErrorResponse, "description": _ERRORS[status]}
        if status == 429:
            table[status]["headers"] = _RETRY_AFTER
    return table


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    ChatCompletionRequest,
    CompletionRequest,
    TokenizeRequest,
    DetokenizeRequest,
    ResponsesRequest,
)
STREAM_MODELS: tuple[type[BaseModel], ...] = (ChatCompletionChunk, CompletionChunk, ResponseStreamEvent, ErrorResponse)


def openapi_schemas(served_model_names: tuple[str, ...], vocab_size: int | None) -> dict[str, Any]:
    """What FastAPI cannot see for components/schemas: the request bodies and stream chunks (with
    the models they use).

    `model` is documented as one of `served_model_names` (any other name is answered 404), and
    token ids as below `vocab_size` when it is known.
    """
    schemas: dict[str, Any] = {}
    for models, mode in ((REQUEST_MODELS, "validation"), (STREAM_MODELS, "serialization")):
        for model in models:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)
            schemas.update(schema.pop("$defs", {}))
            if model in REQUEST_MODELS:
                schema["properties"]["model"]["anyOf"] = [{"enum": list(served_model_names)}, {"type": "null"}]
            schemas[model.__name__] = schema
    _set_token_id_maximum(schemas, vocab_size)
    return schemas


def _set_token_id_maximum(schema: Any, vocab_size: int | None) -> None:
    """Replace each token-id marker with the vocabulary's last id as `maximum` (the marker alone without it)."""
    if isinstance(schema, dict):
        if schema.pop(VOCAB_MARKER, False) and vocab_size is not None:
            schema["maximum"] = vocab_size - 1
        for value in schema.values():
            _set_token_id_maximum(value, vocab_size)
    elif isinstance(schema, list):
        for value in schema:
            _set_token_id_maximum(value, vocab_size)
