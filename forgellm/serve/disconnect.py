"""Client disconnects: wait for `http.disconnect`, and run work only as long as the client stays."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any, TypeVar

T = TypeVar("T")
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class ClientGone(Exception):
    """The client disconnected before the answer was ready."""


async def wait_for_disconnect(receive: Receive) -> None:
    """Return when the server reports that the client went away (after the body was read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def run_until_disconnect(work: Coroutine[Any, Any, T], receive: Receive) -> T:
    """Await `work`, cancelling it (so it aborts its engine requests) if the client disconnects first.

    A non-streaming handler is not cancelled by the server when its client leaves, so without this
    the engine would finish a request nobody will read.
    """
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this handler itself is cancelled (server shutdown)
        for task in (work_task, watch_task):
            task.cancel()
        await asyncio.gather(work_task, watch_task, return_exceptions=True)
    if work_task.cancelled():  # the client left first
        raise ClientGone()
    return work_task.result()
