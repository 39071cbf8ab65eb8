"""A measurement prototype, not product code: AsyncLLM's interface with the engine loop in a child process.

benchmarks/serve_placement.py serves it with the real app (build_app) to compare against AsyncLLM,
whose engine loop is a thread. Commands go to the child over a multiprocessing Pipe; each step's
outputs come back pickled and a reader thread in the server process hands them to the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import multiprocessing as mp
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from forgellm.config import EngineConfig
from forgellm.engine.core import EngineStats
from forgellm.engine.llm_engine import LLMEngine

# Called in each process that builds an engine (the child, and the parent's tokenize-only copy).
EnginePatch = Callable[[LLMEngine], None]


def _child_main(config: EngineConfig, patch: EnginePatch, conn: Any) -> None:
    engine = LLMEngine(config)
    patch(engine)
    conn.send(("ready", engine.stats()))
    while True:
        busy = engine.has_unfinished_requests()
        commands = []
        if not busy:
            commands.append(conn.recv())
        while conn.poll():
            commands.append(conn.recv())
        for command in commands:
            if command[0] == "stop":
                return
            if command[0] == "abort":
                engine.abort_request(command[1])
            else:
                _, request_id, processed, stream = command
                engine.add_request(request_id, processed, stream=stream)
        outputs = engine.step() if busy or commands else []
        conn.send(("step", outputs, engine.stats()))


class ProcessAsyncLLM:
    """The slice of AsyncLLM that build_app uses, with LLMEngine stepping in another process."""

    def __init__(self, config: EngineConfig, patch: EnginePatch) -> None:
        self.config = config
        self.engine = LLMEngine(config)  # tokenizing and validation only: this copy never steps
        context = mp.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(target=_child_main, args=(config, patch, child_conn), daemon=True)
        self._process.start()
        _, self._stats = self._conn.recv()
        self._send_lock = threading.Lock()
        self._sinks: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._ids = itertools.count()
        self._pool = ThreadPoolExecutor(max_workers=2)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.is_alive = True

    tokenizer = property(lambda self: self.engine.tokenizer)
    max_model_len = property(lambda self: self.engine.max_model_len)

    def default_sampling_params(self) -> Any:
        return self.engine.input_processor.default_sampling_params()

    def stats(self) -> EngineStats:
        return self._stats

    def num_waiting(self) -> int:
        return self._stats.num_waiting

    async def run_in_pool(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def process(self, prompt: Any, params: Any = None) -> Any:
        return await self.run_in_pool(self.engine.process, prompt, params)

    async def render_chat(self, messages: Any, add_generation_prompt: bool = True) -> list[int]:
        def render() -> list[int]:
            text = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt)
            return self.tokenizer.encode(text, add_special_tokens=False)

        return await self.run_in_pool(render)

    def _send(self, message: tuple) -> None:
        with self._send_lock:  # Connection.send is not safe from several threads at once
            self._conn.send(message)

    async def generate(self, prompt: Any, params: Any = None, request_id: str | None = None, **kw: Any) -> Any:
        processed = prompt if hasattr(prompt, "prompt_token_ids") else await self.process(prompt, params)
        request_id = request_id or f"p-{next(self._ids)}"
        queue: asyncio.Queue = asyncio.Queue()
        self._sinks[request_id] = (asyncio.get_running_loop(), queue)
        self._send(("add", request_id, processed, kw.get("stream", True)))
        finished = False
        try:
            while not finished:
                item = await queue.get()
                while not queue.empty():
                    item = queue.get_nowait()
                finished = item.finished
                yield item
        finally:
            self._sinks.pop(request_id, None)
            if not finished:
                self._send(("abort", request_id))

    def _read(self) -> None:
        while True:
            try:
                kind, outputs, stats = self._conn.recv()
            except (EOFError, OSError):
                self.is_alive = False
                return
            self._stats = stats
            batches: dict[asyncio.AbstractEventLoop, list] = {}
            for out in outputs:
                sink = self._sinks.get(out.request_id)
                if sink is not None:
                    out.metrics = dataclasses.replace(out.metrics) if out.metrics else None
                    batches.setdefault(sink[0], []).append((sink[1], out))
            for loop, items in batches.items():
                loop.call_soon_threadsafe(lambda items=items: [q.put_nowait(o) for q, o in items])

    def shutdown(self, timeout: float | None = 10.0) -> None:
        try:
            self._send(("stop",))
        except OSError:
            pass
        self._process.join(timeout)
        self._pool.shutdown(wait=False)
