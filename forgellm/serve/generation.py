"""What chat and completions share: starting engine streams, merging them, usage, and error events."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from forgellm.engine.input_processor import Prompt
from forgellm.outputs import RequestOutput
from forgellm.sampling_params import SamplingParams
from forgellm.serve.context import ServerContext
from forgellm.serve.disconnect import ClientGone, run_until_disconnect
from forgellm.serve.errors import APIError, api_error_from
from forgellm.serve.output_constraints import naming_constraint_errors
from forgellm.serve.sse import sse_event

_END = object()
# Status of a response nobody will read (the client left); nginx's name for it.
CLIENT_CLOSED_REQUEST = 499


async def start_streams(
    ctx: ServerContext,
    prompts: Sequence[Prompt],
    params: SamplingParams,
    request_id: str,
    stream: bool,
    constraint_field: str = "structured_outputs",
) -> list[AsyncIterator[RequestOutput]]:
    """Admit one engine request per prompt (ids `request_id`, `request_id-1`, ...), all or none.

    Errors (a bad prompt, a full queue, a dead engine, an output constraint that does not compile: named
    as `constraint_field`) raise here, before a response starts.
    Streams yield delta outputs (the engine then copies no growing lists each step); a request that
    is not streamed yields its one cumulative output.
    """
    request_ids = [request_id if i == 0 else f"{request_id}-{i}" for i in range(len(prompts))]
    with naming_constraint_errors(constraint_field):
        streams = await ctx.engine.add_requests(prompts, params, request_ids, stream=stream, delta=stream)
    return [ctx.metrics.track(s) for s in streams]


async def merge(streams: list[AsyncIterator[RequestOutput]]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(stream index, output) pairs from several streams as they arrive; closing it closes them all."""
    if len(streams) == 1:  # the common case needs no tasks
        async with contextlib.aclosing(streams[0]) as only:  # type: ignore[type-var]
            async for out in only:
                yield 0, out
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[RequestOutput]) -> None:
        try:
            async for out in stream:
                queue.put_nowait((index, out))
        except Exception as exc:  # handed to the reader, which raises it
            queue.put_nowait((index, exc))
        finally:
            queue.put_nowait((index, _END))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is _END:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in streams:
            await stream.aclose()  # type: ignore[attr-defined]


async def final_outputs(streams: list[AsyncIterator[RequestOutput]]) -> list[RequestOutput]:
    """The finished output of every stream, in stream order."""
    last: dict[int, RequestOutput] = {}
    async with contextlib.aclosing(merge(streams)) as merged:
        async for index, out in merged:
            last[index] = out
    return [last[i] for i in range(len(streams))]


async def respond_when_done(request: Request, work: Any) -> Response:
    """Run `work` (a coroutine returning a JSON-able dict) unless the client leaves first."""
    try:
        body = await run_until_disconnect(work, request.receive)
    except ClientGone:  # its engine requests were aborted when `work` was cancelled
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    except asyncio.CancelledError:
        # The server's graceful shutdown ran out of time: answer instead of leaking a traceback.
        return APIError(
            503, "the server is shutting down; retry the request", type="server_error", code="server_shutting_down"
        ).response()
    return JSONResponse(body)


def usage(outputs: list[RequestOutput], completion_tokens: int | None = None) -> dict[str, Any]:
    """OpenAI's usage block summed over the requests (n choices share one prompt).

    Delta outputs hold only their last tokens: streams pass the count they kept as completion_tokens.
    """
    prompt = sum(len(out.prompt_token_ids) for out in outputs)
    if completion_tokens is not None:
        completion = completion_tokens
    else:
        completion = sum(len(c.token_ids) for out in outputs for c in out.outputs)
    cached = sum(out.num_cached_tokens for out in outputs)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def error_event(exc: Exception) -> bytes:
    """After the first byte the status is 200 already: a failure goes out as an SSE `error` event."""
    return sse_event(api_error_from(exc).body())
