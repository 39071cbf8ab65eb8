"""AsyncLLM: the engine behind asyncio code. One thread steps the LLMEngine; coroutines stream results.

The front-end (this class) admits requests: it reserves their place in the waiting queue, tokenizes
and validates them in a small thread pool (neither on the event loop nor in the engine's thread),
and names each one with a wire id of its own. The engine thread runs an EngineLoop (engine_loop.py)
over a queue of commands and hands each step's outputs to the requests' OutputSinks, which wake their
event loops without ever waiting on them. ProcessAsyncLLM (process_engine.py) keeps this front-end and
steps the engine in a child process instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
import queue
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from forgellm.config import DEFAULT_MAX_WAITING_REQUESTS, EngineConfig
from forgellm.engine.admission import RequestLimits
from forgellm.engine.core import EngineStats
from forgellm.engine.engine_loop import AbortCommand, AddCommand, Command, EngineLoop, StepReport, StopCommand
from forgellm.engine.input_processor import ProcessedPrompt, Prompt
from forgellm.engine.llm_engine import LLMEngine
from forgellm.engine.output_sink import OutputSink
from forgellm.engine.request_stream import RequestStream
from forgellm.errors import EngineDeadError, InvalidRequestError, QueueFullError, RequestFailedError
from forgellm.hf.tokenizer import Tokenizer
from forgellm.outputs import RequestOutput
from forgellm.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _Snapshot:
    """What the engine side publishes after each iteration (replaced whole, never mutated)."""

    stats: EngineStats
    sequences_consumed: int  # sequences (n per request) the engine has taken in


@dataclasses.dataclass(frozen=True)
class _Pending:
    """A request in the engine: who asked (their id), where its outputs go, and its prompt."""

    request_id: str
    sink: OutputSink
    prompt: str | None
    prompt_token_ids: list[int]


class AsyncLLM:
    """Streams RequestOutputs to coroutines; `AsyncLLM()` serves the embedded demo model.

    `add_request` admits a request and returns its stream (errors raise before anything is queued);
    `generate` does both in one async generator. Leaving a stream early (break, cancel, an exception)
    aborts the request and frees its KV blocks; `abort(request_id)` ends it with finish_reason
    "abort". At most `max_waiting_requests` sequences wait for a seat (None: no limit); beyond that
    `add_request` raises QueueFullError.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        config: EngineConfig | None = None,
        engine: LLMEngine | None = None,
        max_waiting_requests: int | None = DEFAULT_MAX_WAITING_REQUESTS,
        **kwargs: Any,
    ) -> None:
        """Build the engine from `model`/options or `config`, or take over an already built `engine`."""
        if engine is not None:
            if model is not None or config is not None or kwargs:
                raise InvalidRequestError("pass engine= alone: it already holds its configuration")
        else:
            config = _engine_config(model, config, kwargs)
            engine = LLMEngine(config)  # the model loads here, in the caller's thread
        self._init_front_end(engine.config, max_waiting_requests)
        self.engine = engine
        self._input_processor = engine.input_processor
        self._tokenizer = engine.tokenizer
        self.media_policy = engine.media_policy
        self.model_info = engine.model_info
        self._snapshot = _Snapshot(engine.stats(), 0)
        self._inbox: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run_engine, name="forgellm-engine", daemon=True)
        self._thread.start()

    def _init_front_end(self, config: EngineConfig, max_waiting_requests: int | None) -> None:
        """State of the front-end, shared by the thread and process transports."""
        if max_waiting_requests is not None and max_waiting_requests < 1:
            raise InvalidRequestError(f"max_waiting_requests must be >= 1 or None, got {max_waiting_requests}")
        self.config = config
        self.max_waiting_requests = max_waiting_requests
        # Guards the request tables and "is it alive?" against the engine side, which also ends requests.
        self._lock = threading.Lock()
        self._dead: EngineDeadError | None = None
        self._ids = itertools.count()
        self._wire_ids = itertools.count()
        self._pending: dict[str, _Pending] = {}  # wire id -> request
        self._live: dict[str, str] = {}  # caller's request id -> wire id, while it runs
        self._sequences_admitted = 0  # since start: reserved, less those refused before reaching the engine
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="forgellm-tokenize")

    # --- the asyncio side ------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def limits(self) -> RequestLimits:
        """The engine's admission limits."""
        return self._input_processor.limits

    @property
    def max_model_len(self) -> int:
        return self.limits.max_model_len

    @property
    def is_alive(self) -> bool:
        return self._dead is None

    def default_sampling_params(self) -> SamplingParams:
        """SamplingParams carrying the model's generation_config.json defaults."""
        return self._input_processor.default_sampling_params()

    def stats(self) -> EngineStats:
        """The engine's counters and gauges as of its last step."""
        return self._snapshot.stats

    @property
    def num_live_requests(self) -> int:
        """Requests admitted and not finished (what a data-parallel front balances)."""
        return len(self._live)

    def num_waiting(self) -> int:
        """Sequences admitted and not yet running: the engine's queue, its inbox, and those tokenizing."""
        snapshot = self._snapshot
        in_transit = self._sequences_admitted - snapshot.sequences_consumed
        return snapshot.stats.num_waiting + max(0, in_transit)

    async def run_in_pool(self, fn: Any, *args: Any) -> Any:
        """Run a CPU-bound helper (tokenizing, rendering) off the event loop and off the engine thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    @property
    def accepts_images(self) -> bool:
        """Whether the model is a vision-language model (prompts may carry multi_modal_data)."""
        return self._input_processor.vision is not None

    async def process(self, prompt: Prompt, params: SamplingParams | None = None) -> ProcessedPrompt:
        """Tokenize and validate a prompt without queuing it (raises a typed error on bad input)."""
        return await self.run_in_pool(self._input_processor.process, prompt, params)

    async def render_chat(
        self,
        messages: Sequence[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[int]:
        """Token ids of a conversation rendered with the model's chat template (which adds its own BOS); `tools`
        go to the template too, which must show them (Tokenizer.apply_chat_template)."""

        def render() -> list[int]:
            variables = chat_template_kwargs or {}
            text = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt, tools=tools, **variables)
            return self.tokenizer.encode(text, add_special_tokens=False)

        return await self.run_in_pool(render)

    async def add_request(
        self,
        prompt: Prompt | ProcessedPrompt,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        *,
        priority: int = 0,
        stream: bool = True,
        delta: bool = False,
    ) -> RequestStream:
        """Admit a request and return the async iterator of its outputs.

        Raises before anything is queued: EngineDeadError, InvalidRequestError (a bad value, or a
        `request_id` still running), QueueFullError (try again later), ContextLengthError,
        CapacityError. Outputs are cumulative unless delta=True (with stream), when each holds only
        what is new; with stream=False only the final output comes.
        """
        request_id = request_id if request_id is not None else f"async-{next(self._ids)}"
        [outputs] = await self.add_requests(
            [prompt], params, [request_id], priority=priority, stream=stream, delta=delta
        )
        return outputs

    async def add_requests(
        self,
        prompts: Sequence[Prompt | ProcessedPrompt],
        params: SamplingParams | None,
        request_ids: Sequence[str],
        *,
        priority: int = 0,
        stream: bool = True,
        delta: bool = False,
    ) -> list[RequestStream]:
        """`add_request` for several prompts sharing `params`: all are admitted, or none is queued.

        Their places in the waiting queue are reserved before any is tokenized, so a burst of
        requests cannot pass the limit together while it tokenizes.
        """
        if len(prompts) != len(request_ids):
            raise InvalidRequestError(f"got {len(request_ids)} request ids for {len(prompts)} prompts", "request_id")
        default_n = (params or self.default_sampling_params()).n
        n = sum(p.sampling_params.n if isinstance(p, ProcessedPrompt) else default_n for p in prompts)
        self._reserve(request_ids, n)
        queued = False
        try:
            processed = [p if isinstance(p, ProcessedPrompt) else await self.process(p, params) for p in prompts]
            loop = asyncio.get_running_loop()
            streams = []
            with self._lock:
                if self._dead is not None:
                    raise self._dead
                for request_id, item in zip(request_ids, processed):
                    wire_id, sink = f"{next(self._wire_ids)}", OutputSink(loop)
                    self._pending[wire_id] = _Pending(request_id, sink, item.prompt, item.prompt_token_ids)
                    self._live[request_id] = wire_id
                    self._send(AddCommand(wire_id, item, priority, stream, delta and stream))
                    streams.append(RequestStream(sink, functools.partial(self._abort_wire, wire_id)))
                queued = True
        finally:
            if not queued:  # refused (or cancelled) before reaching the engine: undo the reservation
                with self._lock:
                    self._sequences_admitted -= n
                    for request_id in request_ids:
                        if self._live.get(request_id) == "":
                            del self._live[request_id]
        return streams

    def _reserve(self, request_ids: Sequence[str], n: int) -> None:
        """Claim the request ids and n places in the waiting queue, or raise without changing anything."""
        limit = self.max_waiting_requests
        with self._lock:
            if self._dead is not None:
                raise self._dead
            seen: set[str] = set()
            for request_id in request_ids:
                if request_id in self._live or request_id in seen:
                    raise InvalidRequestError(f"request id {request_id!r} is already in use", "request_id")
                seen.add(request_id)
            if limit is not None and n > limit:
                raise InvalidRequestError(
                    f"the request asks for {n} sequences but at most {limit} may wait (max_waiting_requests)", "n"
                )
            waiting = self.num_waiting()
            if limit is not None and waiting + n > limit:
                raise QueueFullError(
                    f"the engine is at capacity ({waiting} sequences waiting, limit {limit}); retry later"
                )
            for request_id in request_ids:
                self._live[request_id] = ""  # claimed; the wire id comes once it is queued
            self._sequences_admitted += n

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
        """`add_request`, then yield its outputs: one async generator for both."""
        outputs = await self.add_request(prompt, params, request_id, priority=priority, stream=stream, delta=delta)
        try:
            async for out in outputs:
                yield out
        finally:
            await outputs.aclose()

    def abort(self, request_id: str) -> None:
        """Abort a running request by id: its stream ends with finish_reason "abort" (unknown ids are ignored)."""
        wire_id = self._live.get(request_id)
        if wire_id:  # "" while it is being admitted: not in the engine yet
            self._abort_wire(wire_id)

    def _abort_wire(self, wire_id: str) -> None:
        """Abort one request by its wire id (its caller's id is free again at once)."""
        with self._lock:
            pending = self._pending.get(wire_id)
            if pending is None:
                return
            if self._live.get(pending.request_id) == wire_id:
                del self._live[pending.request_id]
            self._send(AbortCommand(wire_id))

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stop the engine thread (running requests end with EngineDeadError) and the tokenizer pool."""
        self._send(StopCommand())
        self._thread.join(timeout)
        self._fail_everything(EngineDeadError("the engine was shut down"))
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- the engine side -------------------------------------------------------------------------

    def _send(self, command: Command) -> None:
        """Hand a command to the engine loop (never blocks: the loop takes it between steps)."""
        self._inbox.put(command)

    def _receive(self, block: bool) -> list[Command]:
        commands = [self._inbox.get()] if block else []
        try:
            while True:
                commands.append(self._inbox.get_nowait())
        except queue.Empty:
            return commands

    def _run_engine(self) -> None:
        try:
            device = self.engine.core.runner.device
            if device.type == "cuda":  # the current device is per thread; this one runs every kernel
                torch.cuda.set_device(device)
            EngineLoop(self.engine, self._receive, self._on_step).run()
        except BaseException as exc:  # the engine is broken: fail every request, refuse new ones
            logger.exception("the engine loop failed; the engine is dead")
            self._fail_everything(EngineDeadError(f"the engine failed and stopped serving: {exc!r}"))
            return
        self._fail_everything(EngineDeadError("the engine was shut down"))

    def _on_step(self, report: StepReport) -> None:
        self._deliver(report.outputs, report.refused)
        self._snapshot = _Snapshot(report.stats, report.sequences_consumed)

    def _deliver(self, outputs: list[Any], refused: list[tuple[str, Exception]]) -> None:
        """Hand one step's outputs (RequestOutputs here; wire tuples in ProcessAsyncLLM) to their sinks.

        An output that cannot be turned into a RequestOutput fails its request alone.
        """
        gone: list[str] = []
        with self._lock:
            for wire_id, error in refused:
                pending = self._end(wire_id)
                if pending is not None:
                    pending.sink.put(error)
            for out in outputs:
                wire_id = self._wire_id_of(out)
                pending = self._pending.get(wire_id)
                if pending is None:
                    continue  # its caller left; the abort is on its way
                try:
                    result = self._to_output(out, pending)
                except Exception as exc:
                    logger.exception("an output of request %r could not be read; failing the request", wire_id)
                    self._end(wire_id)
                    pending.sink.put(RequestFailedError(f"the engine sent an unreadable output: {exc!r}"))
                    gone.append(wire_id)  # stop computing it
                    continue
                if result.finished:
                    self._end(wire_id)
                if not pending.sink.put(result):
                    gone.append(wire_id)  # its event loop is closed: nobody will read it
        for wire_id in gone:
            self._send(AbortCommand(wire_id))

    def _end(self, wire_id: str) -> _Pending | None:
        """Forget a request that finished (the caller holds the lock)."""
        pending = self._pending.pop(wire_id, None)
        if pending is not None and self._live.get(pending.request_id) == wire_id:
            del self._live[pending.request_id]
        return pending

    @staticmethod
    def _wire_id_of(out: Any) -> str:
        return out.request_id

    @staticmethod
    def _to_output(out: Any, pending: _Pending) -> RequestOutput:
        """The caller's RequestOutput: its own request id, and a frozen copy of the metrics."""
        out.request_id = pending.request_id
        if out.metrics is not None:  # the engine keeps updating its metrics object
            out.metrics = dataclasses.replace(out.metrics)
        return out

    def _fail_everything(self, error: EngineDeadError) -> None:
        """The engine is gone: every waiting caller gets `error`, and new requests are refused."""
        with self._lock:
            if self._dead is None:
                self._dead = error
            pending, self._pending, self._live = list(self._pending.values()), {}, {}
        for p in pending:
            p.sink.put(error)


def _engine_config(model: str | None, config: EngineConfig | None, kwargs: dict[str, Any]) -> EngineConfig:
    if config is None:
        return EngineConfig(model=model, **kwargs)
    if model is not None or kwargs:
        raise InvalidRequestError("pass either config=EngineConfig(...) or model/keyword options, not both")
    return config
