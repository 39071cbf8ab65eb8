"""POST /v1/chat/completions: a conversation rendered with the model's chat template, streamed or not."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from forgellm.errors import InvalidRequestError
from forgellm.outputs import RequestOutput
from forgellm.serve.context import ServerContext, now_seconds
from forgellm.serve.deltas import DeltaTracker
from forgellm.serve.generation import error_event, final_outputs, respond_when_done, start_streams, usage
from forgellm.serve.logprobs import chat_logprobs, prompt_logprobs_list
from forgellm.serve.openapi import GENERATION_ERRORS, ChatCompletion, ChatCompletionChunk, openapi_extra, responses
from forgellm.serve.protocol import ChatCompletionRequest
from forgellm.serve.sse import DONE_EVENT, EventStreamResponse, sse_event
from forgellm.serve.stream_usage import StreamUsage
from forgellm.serve.tool_parsers import TOOL_PARSERS
from forgellm.serve.tools import ToolCalling


def chat_router(ctx: ServerContext, auth: Any) -> APIRouter:
    """The chat completions route, bound to `ctx`; `auth` is the API-key dependency."""
    router = APIRouter(dependencies=[Depends(auth)])

    has_key = ctx.settings.api_key is not None

    @router.post(
        "/v1/chat/completions",
        openapi_extra=openapi_extra(ChatCompletionRequest, has_key),
        responses=responses(ChatCompletion, GENERATION_ERRORS, stream=ChatCompletionChunk, api_key=has_key),
    )
    async def create_chat_completion(request: Request) -> Response:
        body, params = await ctx.accept(request, ChatCompletionRequest)
        request_id, created = ctx.request_id(request, "chatcmpl"), now_seconds()
        calling = ToolCalling(
            TOOL_PARSERS[ctx.settings.tool_call_parser](),
            body.tools or [],
            body.tool_choice or "auto",
            body.parallel_tool_calls is not False,
        )
        constraint_field = body.constraint_field
        forced = calling.constraint()
        if forced is not None:  # a call is required: the grammar makes the model write one
            if params.structured_outputs is not None:
                raise InvalidRequestError(
                    f"tool_choice requires a call, which {constraint_field} forbids", "tool_choice"
                )
            params, constraint_field = replace(params, structured_outputs=forced), "tool_choice"
        prompt_ids = await ctx.engine.render_chat(body.template_messages(), tools=body.tools or None)
        header = {"id": request_id, "created": created, "model": ctx.settings.model_name}
        top_k = params.logprobs
        [stream] = await start_streams(ctx, [prompt_ids], params, request_id, body.stream, constraint_field)
        if body.stream:
            report = StreamUsage.of(body.stream_options)
            return EventStreamResponse(_events(stream, header, params.n, top_k, report, len(prompt_ids), calling))
        return await respond_when_done(request, _complete(stream, header, top_k, calling, body.prompt_logprobs))

    return router


async def _complete(
    stream: AsyncIterator[RequestOutput],
    header: dict[str, Any],
    top_k: int | None,
    calling: ToolCalling,
    prompt_k: int | None = None,
) -> dict[str, Any]:
    [out] = await final_outputs([stream])
    if prompt_k is not None and out.prompt_logprobs is not None:
        # vLLM's extension; in chat it belongs to the response (the rendered conversation), not a choice.
        listed = prompt_logprobs_list(out.prompt_token_ids, out.prompt_logprobs, prompt_k)
        header = {**header, "prompt_logprobs": listed}
    choices = []
    for c in out.outputs:
        message, finish_reason = calling.message(c.text, c.finish_reason)
        choice: dict[str, Any] = {
            "index": c.index,
            "message": message,
            "logprobs": chat_logprobs(c.token_ids, c.logprobs, top_k) if top_k is not None and c.logprobs else None,
            "finish_reason": finish_reason,
            "stop_reason": c.stop_reason,
        }
        choices.append(choice)
    return {**header, "object": "chat.completion", "choices": choices, "usage": usage([out])}


async def _events(
    stream: AsyncIterator[RequestOutput],
    header: dict[str, Any],
    n: int,
    top_k: int | None,
    report: StreamUsage,
    prompt_tokens: int,
    calling: ToolCalling,
) -> AsyncIterator[bytes]:
    base = report.base({**header, "object": "chat.completion.chunk"})

    def chunk(choices: list[dict[str, Any]]) -> bytes:
        return sse_event(report.add_running({**base, "choices": choices}, prompt_tokens, tracker.num_tokens))

    tracker = DeltaTracker(n)
    # With tools, each choice holds back text from where a call may begin, and sends its calls at the end.
    calls = [calling.streamer() for _ in range(n)] if calling.active else None
    last: RequestOutput | None = None
    try:
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            yield chunk(
                [
                    {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                    for i in range(n)
                ]
            )
            async for last in stream:
                choices = []
                for d in tracker.update(last):
                    text, finish_reason, tool_calls = d.text, d.finish_reason, []
                    if calls is not None:
                        text = calls[d.index].feed(d.text)
                        if finish_reason is not None:
                            rest, tool_calls, finish_reason = calls[d.index].finish(finish_reason)
                            text += rest
                    delta: dict[str, Any] = {"content": text} if text else {}
                    if tool_calls:
                        delta["tool_calls"] = tool_calls
                    choice: dict[str, Any] = {
                        "index": d.index,
                        "delta": delta,
                        "logprobs": chat_logprobs(d.token_ids, d.logprobs, top_k)
                        if top_k is not None and d.logprobs
                        else None,
                        "finish_reason": finish_reason,
                    }
                    if d.finish_reason is not None:
                        choice["stop_reason"] = d.stop_reason
                    choices.append(choice)
                if choices:
                    yield chunk(choices)
        if report.final and last is not None:
            yield sse_event({**base, "choices": [], "usage": usage([last], tracker.num_tokens)})
    except Exception as exc:
        yield error_event(exc)
    yield DONE_EVENT
