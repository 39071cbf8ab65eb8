"""POST /v1/chat/completions: a conversation rendered with the model's chat template, streamed or not."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from forgellm.errors import InvalidRequestError
from forgellm.multimodal.chat_content import refuse_images_for_text_only_model, split_images
from forgellm.outputs import RequestOutput
from forgellm.serve.chat_output import ChatOutput
from forgellm.serve.context import ServerContext, now_seconds
from forgellm.serve.deltas import DeltaTracker
from forgellm.serve.generation import error_event, final_outputs, respond_when_done, start_streams, usage
from forgellm.serve.logprobs import chat_logprobs, prompt_logprobs_list
from forgellm.serve.openapi import GENERATION_ERRORS, ChatCompletion, ChatCompletionChunk, openapi_extra, responses
from forgellm.serve.output_constraints import after_reasoning, naming_constraint_errors
from forgellm.serve.protocol import ChatCompletionRequest
from forgellm.serve.reasoning_parsers import REASONING_PARSERS
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
        # Image parts resolve (data URLs decode, allowed files and hosts are read) off the event loop.
        messages, images = await ctx.engine.run_in_pool(split_images, body.template_messages(), ctx.engine.media_policy)
        if images and not ctx.engine.accepts_images:
            refuse_images_for_text_only_model()
        prompt_ids = await ctx.engine.render_chat(
            messages, tools=body.tools or None, chat_template_kwargs=body.chat_template_kwargs
        )
        prompt: Any = prompt_ids
        if images:  # processed here: the images' tokens count in the prompt (usage of streamed chunks)
            with naming_constraint_errors(constraint_field):
                mm_prompt = {"prompt_token_ids": prompt_ids, "multi_modal_data": {"image": images}}
                prompt = await ctx.engine.process(mm_prompt, params)
            prompt_ids = prompt.prompt_token_ids
        reasoning = REASONING_PARSERS[ctx.settings.reasoning_parser] if ctx.settings.reasoning_parser else None
        constraint = params.structured_outputs
        # A reasoning model thinks freely, then answers under the constraint; a structural tag the client sent
        # describes the whole output (it may hold the thinking itself) and is left as it is.
        if (
            reasoning is not None
            and constraint is not None
            and (forced is not None or constraint.kind != "structural_tag")
        ):
            wrapped = after_reasoning({constraint.kind: getattr(constraint, constraint.kind)}, reasoning.start,
                                      reasoning.end, reasoning.opened_by_prompt)  # fmt: skip
            params = replace(params, structured_outputs=wrapped)
        output = ChatOutput(calling, reasoning)
        header = {"id": request_id, "created": created, "model": ctx.settings.model_name}
        top_k = params.logprobs
        [stream] = await start_streams(ctx, [prompt], params, request_id, body.stream, constraint_field)
        if body.stream:
            report = StreamUsage.of(body.stream_options)
            return EventStreamResponse(_events(stream, header, params.n, top_k, report, len(prompt_ids), output))
        return await respond_when_done(request, _complete(stream, header, top_k, output, body.prompt_logprobs))

    return router


async def _complete(
    stream: AsyncIterator[RequestOutput],
    header: dict[str, Any],
    top_k: int | None,
    output: ChatOutput,
    prompt_k: int | None = None,
) -> dict[str, Any]:
    [out] = await final_outputs([stream])
    if prompt_k is not None and out.prompt_logprobs is not None:
        # vLLM's extension; in chat it belongs to the response (the rendered conversation), not a choice.
        listed = prompt_logprobs_list(out.prompt_token_ids, out.prompt_logprobs, prompt_k)
        header = {**header, "prompt_logprobs": listed}
    choices = []
    for c in out.outputs:
        message, finish_reason = output.message(c.text, c.finish_reason)
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
    output: ChatOutput,
) -> AsyncIterator[bytes]:
    base = report.base({**header, "object": "chat.completion.chunk"})

    def chunk(choices: list[dict[str, Any]]) -> bytes:
        return sse_event(report.add_running({**base, "choices": choices}, prompt_tokens, tracker.num_tokens))

    tracker = DeltaTracker(n)
    # Each choice splits reasoning from content and holds back text from where a tool call may begin.
    streams = [output.streamer() for _ in range(n)]
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
                    delta, finish_reason = streams[d.index].delta(d.text, d.finish_reason)
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
