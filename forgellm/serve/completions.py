"""POST /v1/completions: one or several prompts (text or token ids), streamed or not."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from forgellm.outputs import RequestOutput
from forgellm.serve.context import ServerContext, now_seconds
from forgellm.serve.deltas import ChoiceDelta, DeltaTracker
from forgellm.serve.generation import error_event, final_outputs, merge, respond_when_done, start_streams, usage
from forgellm.serve.logprobs import completion_logprobs
from forgellm.serve.openapi import GENERATION_ERRORS, Completion, CompletionChunk, openapi_extra, responses
from forgellm.serve.protocol import CompletionRequest
from forgellm.serve.sse import DONE_EVENT, EventStreamResponse, sse_event


def completions_router(ctx: ServerContext, auth: Any) -> APIRouter:
    """The completions route, bound to `ctx`; `auth` is the API-key dependency."""
    router = APIRouter(dependencies=[Depends(auth)])

    has_key = ctx.settings.api_key is not None

    @router.post(
        "/v1/completions",
        openapi_extra=openapi_extra(CompletionRequest, has_key),
        responses=responses(Completion, GENERATION_ERRORS, stream=CompletionChunk, api_key=has_key),
    )
    async def create_completion(request: Request) -> Response:
        body, params = await ctx.accept(request, CompletionRequest)
        prompts = body.prompts()
        ctx.check_prompt_count(len(prompts), params.n)
        request_id = ctx.request_id(request, "cmpl")
        header = {
            "id": request_id,
            "object": "text_completion",
            "created": now_seconds(),
            "model": ctx.settings.model_name,
        }
        # Every prompt is validated before any is queued: one bad prompt fails the request alone.
        streams = await start_streams(ctx, prompts, params, request_id, body.stream)
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return EventStreamResponse(_events(streams, header, params.n, params.logprobs, include_usage))
        return await respond_when_done(request, _complete(streams, header, params.logprobs))

    return router


def _choice(d: ChoiceDelta, top_k: int | None) -> dict[str, Any]:
    logprobs = None
    if top_k is not None and d.logprobs is not None:
        logprobs = completion_logprobs(d.token_ids, d.logprobs, top_k, d.text_offset)
    choice: dict[str, Any] = {"index": d.index, "text": d.text, "logprobs": logprobs, "finish_reason": d.finish_reason}
    if d.finish_reason is not None:
        choice["stop_reason"] = d.stop_reason
    return choice


async def _complete(
    streams: list[AsyncIterator[RequestOutput]], header: dict[str, Any], top_k: int | None
) -> dict[str, Any]:
    outputs = await final_outputs(streams)
    choices = []
    for i, out in enumerate(outputs):  # choice index = prompt index * n + sample index
        choices.extend(_choice(d, top_k) for d in DeltaTracker(len(out.outputs), i * len(out.outputs)).update(out))
    return {**header, "choices": choices, "usage": usage(outputs)}


async def _events(
    streams: list[AsyncIterator[RequestOutput]],
    header: dict[str, Any],
    n: int,
    top_k: int | None,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    base = {**header, "usage": None} if include_usage else header
    trackers = [DeltaTracker(n, i * n) for i in range(len(streams))]
    last: dict[int, RequestOutput] = {}
    try:
        async with contextlib.aclosing(merge(streams)) as merged:
            async for index, out in merged:
                last[index] = out
                choices = [_choice(d, top_k) for d in trackers[index].update(out)]
                if choices:
                    yield sse_event({**base, "choices": choices})
        if include_usage:
            tokens = sum(tracker.num_tokens for tracker in trackers)
            yield sse_event({**base, "choices": [], "usage": usage(list(last.values()), tokens)})
    except Exception as exc:
        yield error_event(exc)
    yield DONE_EVENT
