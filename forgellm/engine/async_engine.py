"""AsyncLLM: the engine behind asyncio code. One thread owns the LLMEngine; coroutines stream results.

The LLMEngine is not thread-safe, so exactly one thread (the engine thread) calls it: it takes add and
abort commands from a thread-safe queue, steps the engine and hands each step's outputs to the event
loops of the waiting coroutines with `call_soon_threadsafe`, so it never waits on them. Tokenization
and chat-template rendering run in a small thread pool, neither on the event loop nor in the engine
thread. ProcessAsyncLLM (forgellm/engine/process_engine.py) steps it in a child process instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import queue
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from forgellm.config import EngineConfig
from forgellm.engine.core import EngineStats
from forgellm.engine.input_processor import ProcessedPrompt, Prompt
from forgellm.engine.llm_engine import LLMEngine
from forgellm.errors import EngineDeadError, InvalidRequestError
from forgellm.hf.tokenizer import Tokenizer
from forgellm.outputs import RequestOutput, merge_deltas
from forgellm.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

_STOP = object()  # the command that ends the engine thread
_ABORTED = object()  # tells a stream that its request was aborted: the stream ends


@dataclasses.dataclass(frozen=True)
class _Sink:
    """Where one request's outputs go: an asyncio queue and the loop that owns it."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


@dataclasses.dataclass(frozen=True)
class _Add:
    request_id: str
    prompt: ProcessedPrompt
    priority: int
    stream: bool
    sink: _Sink
    delta: bool = False


@dataclasses.dataclass(frozen=True)
class _Snapshot:
    """What the engine thread publishes after each iteration (replaced whole, never mutated)."""

    stats: EngineStats
    sequences_consumed: int  # sequences (n per request) the engine thread has taken from the inbox


class AsyncLLM:
    """Streams RequestOutputs to coroutines; `AsyncLLM()` serves the embedded demo model.

    `generate` is an async generator of cumulative RequestOutputs; leaving it early (break, cancel,
    an exception) aborts the request and frees its KV blocks.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        config: EngineConfig | None = None,
        engine: LLMEngine | None = None,
        **kwargs: Any,
    ) -> None:
        """Build the engine from `model`/options or `config`, or take over an already built `engine`."""
        if engine is not None:
            if model is not None or config is not None or kwargs:
                raise InvalidRequestError("pass engine= alone: it already holds its configuration")
        elif config is None:
            config = EngineConfig(model=model, **kwargs)
        elif model is not None or kwargs:
            raise InvalidRequestError("pass either config=EngineConfig(...) or model/keyword options, not both")
        # The model loads here, in the caller's thread, before anything is served.
        self.engine = engine if engine is not None else LLMEngine(config)
        self.config = self.engine.config
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Guards "is it alive?" + "put in the inbox" against the engine thread dying in between.
        self._lock = threading.Lock()
        self._dead: EngineDeadError | None = None
        self._ids = itertools.count()
        self._sequences_submitted = 0
        self._snapshot = _Snapshot(self.engine.stats(), 0)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="forgellm-tokenize")
        self._thread = threading.Thread(target=self._engine_loop, name="forgellm-engine", daemon=True)
        self._thread.start()

    # --- the asyncio side ------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def is_alive(self) -> bool:
        return self._dead is None

    def default_sampling_params(self) -> SamplingParams:
        """SamplingParams carrying the model's generation_config.json defaults."""
        return self.engine.input_processor.default_sampling_params()

    def stats(self) -> EngineStats:
        """The engine's counters and gauges as of its last step."""
        return self._snapshot.stats

    def num_waiting(self) -> int:
        """Sequences queued and not yet running: the engine's count plus those still in the inbox."""
        snapshot = self._snapshot
        return snapshot.stats.num_waiting + max(0, self._sequences_submitted - snapshot.sequences_consumed)

    async def run_in_pool(self, fn: Any, *args: Any) -> Any:
        """Run a CPU-bound helper (tokenizing, rendering) off the event loop and off the engine thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def process(self, prompt: Prompt, params: SamplingParams | None = None) -> ProcessedPrompt:
        """Tokenize and validate a prompt without queuing it (raises a typed error on bad input)."""
        return await self.run_in_pool(self.engine.process, prompt, params)

    async def render_chat(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a conversation rendered with the model's chat template (which adds its own BOS)."""

        def render() -> list[int]:
            text = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt)
            return self.tokenizer.encode(text, add_special_tokens=False)

        return await self.run_in_pool(render)

    async def generate(
        self,
        prompt: Prompt | ProcessedPrompt,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        *,
        priority: int = 0,
        stream: bool = True,
        delta: bool = False,
    ) -> AsyncIterator[RequestOutput]:
        """Yield the request's cumulative RequestOutput as it progresses (only the final one if not stream).

        With delta=True (and stream) each output holds only what is new since the previous one
        (RequestOutput.delta). A slow consumer gets one output covering all since its last read
        (the newest cumulative one, or the queued deltas merged): the backlog never grows.
        """
        processed = prompt if isinstance(prompt, ProcessedPrompt) else await self.process(prompt, params)
        request_id = request_id if request_id is not None else f"async-{next(self._ids)}"
        loop = asyncio.get_running_loop()
        sink = _Sink(loop, asyncio.Queue())
        with self._lock:
            if self._dead is not None:
                raise self._dead
            self._submit(_Add(request_id, processed, priority, stream, sink, delta and stream))
            self._sequences_submitted += processed.sampling_params.n
        finished = False
        try:
            while not finished:
                item = await sink.queue.get()
                while not sink.queue.empty() and isinstance(item, RequestOutput):
                    newer = sink.queue.get_nowait()
                    mergeable = isinstance(newer, RequestOutput) and newer.delta
                    item = merge_deltas(item, newer) if mergeable else newer
                if item is _ABORTED:
                    finished = True  # by abort(): nothing left to abort
                    return
                if isinstance(item, BaseException):
                    finished = True  # not queued (or the engine died): aborting its id could hit another
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:
                self._submit(("abort", request_id))

    def abort(self, request_id: str) -> None:
        """Abort a request by id and free its KV blocks; its stream then ends (unknown ids are ignored)."""
        self._submit(("abort", request_id))

    def _submit(self, command: Any) -> None:
        """Hand an add or abort to the engine loop (never blocks: the loop takes it between steps)."""
        self._inbox.put(command)

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stop the engine thread (running requests end with EngineDeadError) and the tokenizer pool."""
        self._inbox.put(_STOP)
        self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- the engine thread -----------------------------------------------------------------------

    def _engine_loop(self) -> None:
        sinks: dict[str, _Sink] = {}
        consumed = 0
        try:
            device = self.engine.core.runner.device
            if device.type == "cuda":  # the current device is per thread; this one runs every kernel
                torch.cuda.set_device(device)
            while True:
                # Block for work only when idle; while requests run, just take what has arrived.
                busy = self.engine.has_unfinished_requests()
                commands = self._drain(block=not busy)
                for command in commands:
                    if command is _STOP:
                        self._fail_all(sinks, EngineDeadError("the engine was shut down"))
                        return
                    consumed += self._apply(command, sinks)
                # An empty step also lets the engine release state of requests aborted just now.
                if busy or commands:
                    self._deliver(self.engine.step(), sinks)
                self._snapshot = _Snapshot(self.engine.stats(), consumed)
        except BaseException as exc:  # the engine is broken: fail every request, refuse new ones
            logger.exception("the engine loop failed; the engine is dead")
            self._fail_all(sinks, EngineDeadError(f"the engine failed and stopped serving: {exc!r}"))

    def _drain(self, block: bool) -> list[Any]:
        commands = [self._inbox.get()] if block else []
        try:
            while True:
                commands.append(self._inbox.get_nowait())
        except queue.Empty:
            return commands

    def _apply(self, command: Any, sinks: dict[str, _Sink]) -> int:
        """Run one add or abort on the engine; returns the number of sequences taken from the inbox."""
        if isinstance(command, tuple):  # ("abort", request_id)
            self.engine.abort_request(command[1])
            sink = sinks.pop(command[1], None)
            if sink is not None:  # unless its own stream asked (then nobody reads this), end the stream
                _send(sink.loop, [(sink.queue, _ABORTED)])
            return 0
        try:
            self.engine.add_request(
                command.request_id,
                command.prompt,
                priority=command.priority,
                stream=command.stream,
                delta=command.delta,
            )
            sinks[command.request_id] = command.sink
        except Exception as exc:  # a bad request fails alone (e.g. a duplicate id); the engine is fine
            _send(command.sink.loop, [(command.sink.queue, exc)])
        return command.prompt.sampling_params.n

    def _deliver(self, outputs: list[RequestOutput], sinks: dict[str, _Sink]) -> None:
        """Hand one step's outputs to their loops: one wake-up per loop per step."""
        batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Any]]] = {}
        for out in outputs:
            sink = sinks.pop(out.request_id, None) if out.finished else sinks.get(out.request_id)
            if sink is None:
                continue  # aborted while the step ran
            # The engine keeps updating its metrics object; the consumer gets a frozen copy.
            if out.metrics is not None:
                out.metrics = dataclasses.replace(out.metrics)
            batches.setdefault(sink.loop, []).append((sink.queue, out))
        for loop, items in batches.items():
            if not _send(loop, items):  # the loop is gone: nobody will read these requests
                for _, out in items:
                    self.engine.abort_request(out.request_id)
                    sinks.pop(out.request_id, None)

    def _fail_all(self, sinks: dict[str, _Sink], error: EngineDeadError) -> None:
        with self._lock:
            self._dead = error
            # Adds that raced in before _dead was set still get an answer.
            for command in self._drain(block=False):
                if isinstance(command, _Add):
                    sinks[command.request_id] = command.sink
        for sink in sinks.values():
            _send(sink.loop, [(sink.queue, error)])
        sinks.clear()


def _send(loop: asyncio.AbstractEventLoop, items: list[tuple[asyncio.Queue, Any]]) -> bool:
    """Schedule `queue.put_nowait(item)` for each item on `loop`; False if the loop is closed."""
    try:
        loop.call_soon_threadsafe(_put_all, items)
    except RuntimeError:
        return False
    return True


def _put_all(items: list[tuple[asyncio.Queue, Any]]) -> None:
    for q, item in items:
        q.put_nowait(item)
