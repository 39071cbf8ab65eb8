"""ProcessAsyncLLM: AsyncLLM with the engine loop in a child process, so it has a GIL of its own.

In AsyncLLM the engine thread shares the server's GIL: every torch call in a step releases and
retakes it, and each retake can wait behind the event loop's per-token HTTP work. Here the child
process owns the LLMEngine and steps it as AsyncLLM's thread does; the server process keeps the
HTTP side, tokenization (a model-less copy of the input processing) and the per-request streams.

Wire: commands go to the child through a writer thread (the event loop never blocks on the pipe);
after every step the child sends its outputs as plain tuples without the prompt (which the server
already holds), so pickling costs little and stays flat as outputs grow; a reader thread in the
server hands them to the event loops. Streams should ask for delta outputs (the server does).
"""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing as mp
import queue
import signal
import threading
import types
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from forgellm.config import EngineConfig
from forgellm.engine.async_engine import _ABORTED, _STOP, AsyncLLM, _Add, _send, _Sink, _Snapshot
from forgellm.engine.core import EngineCore
from forgellm.engine.input_processor import InputProcessor, ProcessedPrompt, Prompt
from forgellm.engine.llm_engine import LLMEngine, resolve_max_model_len, resolve_model_dir, resolve_tokenizer_dir
from forgellm.errors import EngineDeadError, InvalidRequestError
from forgellm.hf.config import load_model_config
from forgellm.hf.generation_config import load_generation_defaults
from forgellm.hf.tokenizer import Tokenizer
from forgellm.outputs import CompletionOutput, RequestMetrics, RequestOutput
from forgellm.sampling_params import SamplingParams


class _Frontend:
    """The slice of LLMEngine the server process needs (tokenizing, validation) without the model."""

    def __init__(self, config: EngineConfig, limits: tuple[bool, int, int, int]) -> None:
        self.config = config
        model_dir = resolve_model_dir(config.model)
        arch = load_model_config(model_dir)
        self.tokenizer = Tokenizer.from_dir(resolve_tokenizer_dir(config, model_dir))
        self.max_model_len = resolve_max_model_len(config, arch)
        defaults = load_generation_defaults(model_dir)
        self.input_processor = InputProcessor(self.tokenizer, arch.vocab_size, self.max_model_len, defaults)
        chunked, step_tokens, block_size, num_blocks = limits
        # EngineCore.check_fits reads only these four numbers; reusing it keeps one wording of its errors.
        self._limits = types.SimpleNamespace(
            scheduler=types.SimpleNamespace(enable_chunked_prefill=chunked, max_num_batched_tokens=step_tokens),
            kv_cache=types.SimpleNamespace(block_size=block_size, num_blocks=num_blocks),
        )

    def process(self, prompt: Prompt, params: SamplingParams | None = None) -> ProcessedPrompt:
        processed = self.input_processor.process(prompt, params)
        EngineCore.check_fits(self._limits, len(processed.prompt_token_ids), processed.max_tokens)  # type: ignore[arg-type]
        return processed


@dataclasses.dataclass(frozen=True)
class _Pending:
    """A request the child is running: where its outputs go, and the prompt they leave off the wire."""

    sink: _Sink
    prompt: str | None
    prompt_token_ids: list[int]


class ProcessAsyncLLM(AsyncLLM):
    """AsyncLLM's interface (generate, abort, stats, ...) over an LLMEngine stepping in a child process."""

    def __init__(self, model: str | None = None, *, config: EngineConfig | None = None, **kwargs: Any) -> None:
        """Start the child, which builds the engine from `model`/options or `config`; returns once it is ready."""
        if config is None:
            config = EngineConfig(model=model, **kwargs)
        elif model is not None or kwargs:
            raise InvalidRequestError("pass either config=EngineConfig(...) or model/keyword options, not both")
        self.config = config
        context = mp.get_context("spawn")  # never fork a process that may hold CUDA state
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(target=_child_main, args=(config, child_conn), name="forgellm-engine")
        self._process.daemon = True
        self._process.start()
        child_conn.close()
        self._lock = threading.Lock()
        self._dead: EngineDeadError | None = None
        self._stopping = False
        self._ids = itertools.count()
        self._sequences_submitted = 0
        self._requests: dict[str, _Pending] = {}
        self._outbox: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        try:
            message = self._conn.recv()
        except EOFError:
            raise EngineDeadError("the engine process exited while loading the model") from None
        if message[0] == "dead":
            self._process.join(10)
            raise message[1]
        _, limits, stats = message
        self.engine = _Frontend(config, limits)  # type: ignore[assignment]
        self._snapshot = _Snapshot(stats, 0)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="forgellm-tokenize")
        self._writer = threading.Thread(target=self._write, name="forgellm-engine-writer", daemon=True)
        self._reader = threading.Thread(target=self._read, name="forgellm-engine-reader", daemon=True)
        self._writer.start()
        self._reader.start()

    def _submit(self, command: Any) -> None:
        if isinstance(command, _Add):
            if command.request_id in self._requests:  # the child would refuse it, but the sink is keyed by id
                raise InvalidRequestError(f"request id {command.request_id!r} is already in use", "request_id")
            p = command.prompt
            self._requests[command.request_id] = _Pending(command.sink, p.prompt, p.prompt_token_ids)
            self._outbox.put(("add", command.request_id, p, command.priority, command.stream, command.delta))
        elif command is _STOP:
            self._outbox.put(("stop",))
        else:  # ("abort", request_id): the stream ends now; outputs still on the wire are dropped
            pending = self._requests.pop(command[1], None)
            if pending is not None:
                _send(pending.sink.loop, [(pending.sink.queue, _ABORTED)])
            self._outbox.put(command)

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stop the child (running requests end with EngineDeadError) and the tokenizer pool."""
        self._stopping = True
        self._submit(_STOP)
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout)
        self._reader.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _write(self) -> None:
        while True:
            message = self._outbox.get()
            try:
                self._conn.send(message)
            except OSError:  # the child is gone; the reader reports it
                return
            if message[0] == "stop":
                return

    def _read(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                reason = "the engine was shut down" if self._stopping else "the engine process exited"
                self._fail_everything(EngineDeadError(reason))
                return
            if message[0] == "step":
                _, wires, stats, consumed = message
                self._snapshot = _Snapshot(stats, consumed)
                self._deliver_wire(wires)
            elif message[0] == "error":  # one request was refused; the engine is fine
                pending = self._requests.pop(message[1], None)
                if pending is not None:
                    _send(pending.sink.loop, [(pending.sink.queue, message[2])])
            else:  # "dead"
                self._fail_everything(EngineDeadError(f"the engine failed and stopped serving: {message[1]}"))
                return

    def _deliver_wire(self, wires: list[tuple]) -> None:
        """Hand one step's outputs to their loops: one wake-up per loop per step."""
        batches: dict[Any, list[tuple[Any, Any]]] = {}
        for wire in wires:
            request_id, finished = wire[0], wire[1]
            pending = self._requests.pop(request_id, None) if finished else self._requests.get(request_id)
            if pending is None:
                continue  # aborted while the step ran
            out = _decode(wire, pending)
            batches.setdefault(pending.sink.loop, []).append((pending.sink.queue, out))
        for loop, items in batches.items():
            if not _send(loop, items):  # the loop is gone: nobody will read these requests
                for _, out in items:
                    self._submit(("abort", out.request_id))

    def _fail_everything(self, error: EngineDeadError) -> None:
        with self._lock:
            self._dead = error
            pending, self._requests = list(self._requests.values()), {}
        for p in pending:
            _send(p.sink.loop, [(p.sink.queue, error)])


def _encode(out: RequestOutput) -> tuple:
    """A RequestOutput as plain tuples, without the prompt (the server process has it)."""
    m = out.metrics
    metrics = None
    if m is not None:
        metrics = (
            m.arrival_time,
            m.first_scheduled_time,
            m.first_token_time,
            m.last_token_time,
            m.finished_time,
            m.num_cached_tokens,
        )
    samples = [
        (c.index, c.text, c.token_ids, c.cumulative_logprob, c.logprobs, c.finish_reason, c.stop_reason)
        for c in out.outputs
    ]
    return (out.request_id, out.finished, out.delta, samples, metrics, out.num_cached_tokens, out.prompt_logprobs)


def _decode(wire: tuple, pending: _Pending) -> RequestOutput:
    request_id, finished, delta, samples, metrics, num_cached, prompt_logprobs = wire
    return RequestOutput(
        request_id=request_id,
        prompt=pending.prompt,
        prompt_token_ids=pending.prompt_token_ids,
        outputs=[CompletionOutput(*s) for s in samples],
        finished=finished,
        prompt_logprobs=prompt_logprobs,
        metrics=RequestMetrics(*metrics) if metrics is not None else None,
        num_cached_tokens=num_cached,
        delta=delta,
    )


def _child_main(config: EngineConfig, conn: Any) -> None:
    """The engine process: build the engine, then take commands and step, sending each step's outputs."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle; it stops us via "stop"
    try:
        engine = LLMEngine(config)
        core = engine.core
        limits = (
            core.scheduler.enable_chunked_prefill,
            core.scheduler.max_num_batched_tokens,
            core.kv_cache.block_size,
            core.kv_cache.num_blocks,
        )
    except BaseException as exc:  # e.g. a ModelLoadError: the server re-raises it
        conn.send(("dead", exc))
        return
    conn.send(("ready", limits, engine.stats()))
    consumed = 0
    try:
        while True:
            # Block for work only when idle; while requests run, just take what has arrived.
            busy = engine.has_unfinished_requests()
            commands = [] if busy else [conn.recv()]
            while conn.poll():
                commands.append(conn.recv())
            for command in commands:
                if command[0] == "stop":
                    return
                if command[0] == "abort":
                    engine.abort_request(command[1])
                    continue
                _, request_id, prompt, priority, stream, delta = command
                consumed += prompt.sampling_params.n
                try:
                    engine.add_request(request_id, prompt, priority=priority, stream=stream, delta=delta)
                except Exception as exc:  # a bad request fails alone
                    conn.send(("error", request_id, exc))
            # An empty step also lets the engine release state of requests aborted just now.
            outputs = engine.step() if busy or commands else []
            conn.send(("step", [_encode(out) for out in outputs], engine.stats(), consumed))
    except (EOFError, BrokenPipeError):  # the server process is gone
        return
    except BaseException as exc:
        try:
            conn.send(("dead", repr(exc)))
        except OSError:
            pass
