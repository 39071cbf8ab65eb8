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
from forgellm.serve.echo import PromptView
from forgellm.serve.generation import error_event, final_outputs, merge, respond_when_done, start_streams, usage
from forgellm.serve.logprobs import completion_logprobs, join_completion_logprobs
from forgellm.serve.openapi import GENERATION_ERRORS, Completion, CompletionChunk, openapi_extra, responses
from forgellm.serve.protocol import CompletionRequest
from forgellm.serve.sse import DONE_EVENT, EventStreamResponse, sse_event
from forgellm.serve.stream_usage import StreamUsage


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
        streams = await start_streams(ctx, prompts, params, request_id, body.stream, body.constraint_field)
        view = PromptView(body.echo, body.echo_only(), params.logprobs, body.prompt_logprobs)
        shower = _PromptShower(view, ctx.engine.tokenizer)
        if body.stream:
            report = StreamUsage.of(body.stream_options)
            return EventStreamResponse(_events(streams, header, params.n, shower, report))
        return await respond_when_done(request, _complete(streams, header, shower))

    return router


class _PromptShower:
    """Builds choices, echoing each prompt (text, logprobs) where the request asked for it."""

    def __init__(self, view: PromptView, tokenizer: Any) -> None:
        self.view = view
        self.tokenizer = tokenizer

    def choice(self, d: ChoiceDelta, prompt_text_len: int = 0) -> dict[str, Any]:
        """A choice of generated text; `prompt_text_len` shifts its text offsets past an echoed prompt."""
        logprobs = None
        if self.view.top_k is not None and d.logprobs is not None:
            logprobs = completion_logprobs(d.token_ids, d.logprobs, self.view.top_k, prompt_text_len + d.text_offset)
        choice: dict[str, Any] = {
            "index": d.index,
            "text": d.text,
            "logprobs": logprobs,
            "finish_reason": d.finish_reason,
        }
        if d.finish_reason is not None:
            choice["stop_reason"] = d.stop_reason
        return choice

    def echoed(self, out: RequestOutput, choice: dict[str, Any]) -> dict[str, Any]:
        """`choice` (of `out`'s prompt) with the prompt's text and logprobs in front of its own."""
        text, logprobs = self.view.prompt_part(out, self.tokenizer)
        choice["text"] = text + choice["text"]
        if logprobs is not None:
            choice["logprobs"] = join_completion_logprobs(logprobs, choice["logprobs"])
        return choice

    def prompt_chunk_choices(self, out: RequestOutput, first_index: int) -> list[dict[str, Any]]:
        """A stream's first choices for `out`'s prompt: the prompt alone, in each of its n choices."""
        text, logprobs = self.view.prompt_part(out, self.tokenizer) if self.view.echo else ("", None)
        return [
            {"index": first_index + c.index, "text": text, "logprobs": logprobs, "finish_reason": None}
            for c in out.outputs
        ]

    def full_choices(self, out: RequestOutput, first_index: int) -> list[dict[str, Any]]:
        """The finished choices of one prompt, for a response that is not streamed."""
        out = self.view.strip_generation(out)
        prompt_len = len(self.view.prompt_text(out, self.tokenizer)) if self.view.echo else 0
        prompt_logprobs = self.view.prompt_logprobs(out)
        choices = []
        for d in DeltaTracker(len(out.outputs), first_index).update(out):
            choice = self.choice(d, prompt_len)
            if self.view.echo:
                choice = self.echoed(out, choice)
            if self.view.prompt_k is not None:
                choice["prompt_logprobs"] = prompt_logprobs
            choices.append(choice)
        return choices


async def _complete(
    streams: list[AsyncIterator[RequestOutput]], header: dict[str, Any], shower: _PromptShower
) -> dict[str, Any]:
    outputs = await final_outputs(streams)
    choices = []
    for i, out in enumerate(outputs):  # choice index = prompt index * n + sample index
        choices.extend(shower.full_choices(out, i * len(out.outputs)))
    return {**header, "choices": choices, "usage": usage(outputs)}


async def _events(
    streams: list[AsyncIterator[RequestOutput]],
    header: dict[str, Any],
    n: int,
    shower: _PromptShower,
    report: StreamUsage,
) -> AsyncIterator[bytes]:
    base = report.base(header)
    trackers = [DeltaTracker(n, i * n) for i in range(len(streams))]
    # echo: a prompt's text offset once its chunk is sent (as vLLM, before its generated text).
    prompt_lens: dict[int, int] = {}
    view = shower.view
    last: dict[int, RequestOutput] = {}

    def event(choices: list[dict[str, Any]]) -> bytes:
        # Usage so far (continuous_usage_stats): the prompts that have answered, and every token sent.
        prompt_tokens = sum(len(o.prompt_token_ids) for o in last.values())
        completion_tokens = sum(tracker.num_tokens for tracker in trackers)
        return sse_event(report.add_running({**base, "choices": choices}, prompt_tokens, completion_tokens))

    try:
        async with contextlib.aclosing(merge(streams)) as merged:
            async for index, out in merged:
                out = view.strip_generation(out)
                last[index] = out
                if view.echo and index not in prompt_lens:
                    # Delta outputs bring the prompt's logprobs once they are whole, with the first
                    # token: outputs before that (prefill chunks) carry nothing to show.
                    tokens = any(c.token_ids for c in out.outputs)
                    if view.waits_for_prompt_logprobs and out.prompt_logprobs is None and not (out.finished or tokens):
                        continue
                    prompt_lens[index] = len(view.prompt_text(out, shower.tokenizer))
                    yield event(shower.prompt_chunk_choices(out, index * n))
                offset = prompt_lens.get(index, 0)
                choices = [shower.choice(d, offset) for d in trackers[index].update(out)]
                if choices:
                    yield event(choices)
        if report.final:
            tokens = sum(tracker.num_tokens for tracker in trackers)
            yield sse_event({**base, "choices": [], "usage": usage(list(last.values()), tokens)})
    except Exception as exc:
        yield error_event(exc)
    yield DONE_EVENT
