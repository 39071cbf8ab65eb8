"""POST /v1/responses: OpenAI's Responses API on chat's engine path, streamed as typed events or not.

The conversation is `instructions` (a system message), the stored turns of `previous_response_id`,
then `input`, rendered with the chat template; admission and sampling are chat's. The answer is one
assistant message; its conversation is stored (store: true) so a later request can continue it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from forgellm.outputs import RequestOutput
from forgellm.sampling_params import SamplingParams
from forgellm.serve.context import ServerContext, now_seconds
from forgellm.serve.deltas import DeltaTracker
from forgellm.serve.errors import APIError, api_error_from
from forgellm.serve.generation import final_outputs, respond_when_done, start_streams, usage
from forgellm.serve.openapi import GENERATION_ERRORS, openapi_extra, responses
from forgellm.serve.response_store import Message, ResponseStore
from forgellm.serve.responses_openapi import ResponseObject, ResponseStreamEvent
from forgellm.serve.responses_protocol import ResponsesRequest
from forgellm.serve.sse import DONE_EVENT, EventStreamResponse

OnDone = Callable[[str], None]  # called with the answer's text once the response is complete


def responses_router(ctx: ServerContext, auth: Any) -> APIRouter:
    """The Responses route, bound to `ctx` and to its own store of past conversations."""
    router = APIRouter(dependencies=[Depends(auth)])
    store = ResponseStore(ctx.settings.response_store_size, ctx.settings.response_store_ttl_s)
    has_key = ctx.settings.api_key is not None

    @router.post(
        "/v1/responses",
        openapi_extra=openapi_extra(ResponsesRequest, has_key),
        responses=responses(ResponseObject, GENERATION_ERRORS, stream=ResponseStreamEvent, api_key=has_key),
    )
    async def create_response(request: Request) -> Response:
        body, params = await ctx.accept(request, ResponsesRequest)
        conversation = _history(store, body.previous_response_id) + body.input_messages()
        system = [{"role": "system", "content": body.instructions}] if body.instructions is not None else []
        engine_id = ctx.request_id(request, "resp")
        prompt_ids = await ctx.engine.render_chat(system + conversation)
        draft = _Draft(body, params, ctx.settings.model_name)

        def on_done(text: str) -> None:
            # Instructions are not carried over, as OpenAI does: each request gives its own.
            if body.store:
                store.put(draft.id, [*conversation, {"role": "assistant", "content": text}])

        [stream] = await start_streams(ctx, [prompt_ids], params, engine_id, body.stream, "text.format")
        if body.stream:
            return EventStreamResponse(_events(stream, draft, on_done))
        return await respond_when_done(request, _complete(stream, draft, on_done))

    return router


def _history(store: ResponseStore, previous_id: str | None) -> list[Message]:
    """The conversation of `previous_id`, or a 400 naming it when it is unknown or expired."""
    if previous_id is None:
        return []
    history = store.get(previous_id)
    if history is None:
        raise APIError(
            400,
            f"previous response {previous_id!r} was not found: it is unknown, was created with store: false, "
            f"or has expired (this server keeps {store.max_entries} responses for {store.ttl_s:g} s, in memory)",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    return history


class _Draft:
    """The response object of one request, before and after its answer is known."""

    def __init__(self, body: ResponsesRequest, params: SamplingParams, model: str) -> None:
        self.id = f"resp_{uuid.uuid4().hex}"
        self.message_id = f"msg_{uuid.uuid4().hex}"
        self.created_at = now_seconds()
        self.body = body
        self.params = params
        self.model = model

    def message(self, text: str | None, status: str) -> dict[str, Any]:
        """The output message item; `text` None: no content part yet (it is streamed in)."""
        content = [] if text is None else [_output_text(text)]
        return {"type": "message", "id": self.message_id, "status": status, "role": "assistant", "content": content}

    def response(
        self, status: str, text: str | None = None, finish_reason: str | None = None, counts: dict | None = None
    ) -> dict[str, Any]:
        """The response object: in progress (no output yet) or finished with `text` and usage `counts`."""
        incomplete = None
        output: list[dict[str, Any]] = []
        if text is not None:
            if finish_reason == "length":  # the token budget (or the context) ran out mid-answer
                status, incomplete = "incomplete", {"reason": "max_output_tokens"}
            output = [self.message(text, status)]
        body = self.body
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": None,
            "incomplete_details": incomplete,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": False,
            "previous_response_id": body.previous_response_id,
            "store": body.store,
            "temperature": self.params.temperature,
            "top_p": self.params.top_p,
            "text": {"format": (body.text.format if body.text is not None else None) or {"type": "text"}},
            "tool_choice": "none",
            "tools": [],
            "truncation": "disabled",
            "usage": None if counts is None else _response_usage(counts),
            "metadata": body.metadata or {},
            "user": body.user,
        }


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": []}


def _response_usage(counts: dict[str, Any]) -> dict[str, Any]:
    """Chat's usage block in the Responses API's names."""
    cached = counts.get("prompt_tokens_details", {}).get("cached_tokens", 0)
    return {
        "input_tokens": counts["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": counts["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": counts["total_tokens"],
    }


async def _complete(stream: AsyncIterator[RequestOutput], draft: _Draft, on_done: OnDone) -> dict[str, Any]:
    [out] = await final_outputs([stream])
    [answer] = out.outputs
    on_done(answer.text)
    return draft.response("completed", answer.text, answer.finish_reason, usage([out]))


def _typed_event(payload: dict[str, Any]) -> bytes:
    """An SSE event named by its type, as OpenAI sends them (clients read `type` from the data)."""
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"event: {payload['type']}\ndata: {data}\n\n".encode()


async def _events(stream: AsyncIterator[RequestOutput], draft: _Draft, on_done: OnDone) -> AsyncIterator[bytes]:
    """The typed events of one streamed response; an engine failure ends it with an `error` event."""
    numbers = itertools.count()

    def event(type: str, **fields: Any) -> bytes:
        return _typed_event({"type": type, "sequence_number": next(numbers), **fields})

    part = {"item_id": draft.message_id, "output_index": 0, "content_index": 0}  # where each text event goes
    tracker = DeltaTracker(1)
    pieces: list[str] = []
    finish_reason: str | None = None
    last: RequestOutput | None = None
    try:
        async with contextlib.aclosing(stream):  # type: ignore[type-var]  # closing it aborts the request
            yield event("response.created", response=draft.response("in_progress"))
            yield event("response.in_progress", response=draft.response("in_progress"))
            yield event("response.output_item.added", output_index=0, item=draft.message(None, "in_progress"))
            yield event("response.content_part.added", **part, part=_output_text(""))
            async for last in stream:
                for delta in tracker.update(last):
                    if delta.text:
                        pieces.append(delta.text)
                        yield event("response.output_text.delta", **part, delta=delta.text, logprobs=[])
                    finish_reason = delta.finish_reason or finish_reason
        text = "".join(pieces)
        counts = usage([last], tracker.num_tokens) if last is not None else None
        final = draft.response("completed", text, finish_reason, counts)
        item = final["output"][0]
        yield event("response.output_text.done", **part, text=text, logprobs=[])
        yield event("response.content_part.done", **part, part=_output_text(text))
        yield event("response.output_item.done", output_index=0, item=item)
        on_done(text)
        yield event("response.completed" if final["status"] == "completed" else "response.incomplete", response=final)
    except Exception as exc:
        error = api_error_from(exc)
        yield event("error", code=error.code, message=error.message, param=error.param)
    # OpenAI's Responses streams just end; [DONE] is what this server's streams all end with (and
    # what its fuzz checks), and the openai client stops reading at it.
    yield DONE_EVENT
