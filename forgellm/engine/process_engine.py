"""ProcessAsyncLLM: AsyncLLM with the engine loop in a child process, so it has a GIL of its own.

In AsyncLLM the engine thread shares the server's GIL: every torch call in a step releases and
retakes it, and each retake can wait behind the event loop's per-token HTTP work. Here the child
process owns the LLMEngine and runs the same EngineLoop; the server process keeps AsyncLLM's
front-end: admission, tokenization (an InputProcessor with the limits the child reports), and the
per-request streams.

Wire: commands go to the child through a writer thread (the event loop never blocks on the pipe);
after every step the child sends its outputs as plain tuples (wire.py) under their wire ids; a
reader thread in the server hands them to the requests' sinks. If the child dies, or anything
unexpected reaches the reader, the engine is declared dead at once: every waiting caller gets
EngineDeadError and `is_alive` turns False (the server's /health answers 503).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import signal
import threading
from typing import Any

from forgellm.config import DEFAULT_MAX_WAITING_REQUESTS, EngineConfig
from forgellm.engine.async_engine import AsyncLLM, _engine_config, _Pending, _Snapshot
from forgellm.engine.engine_loop import Command, EngineLoop, StepReport, StopCommand
from forgellm.engine.input_processor import InputProcessor
from forgellm.engine.llm_engine import LLMEngine, resolve_model_dir, resolve_tokenizer_dir
from forgellm.engine.wire import decode_error, decode_output, encode_error, encode_output, wire_request_id
from forgellm.errors import EngineDeadError, ForgeLLMError
from forgellm.hf.config import load_model_config
from forgellm.hf.generation_config import load_generation_defaults
from forgellm.hf.tokenizer import Tokenizer
from forgellm.multimodal.chat_content import MediaPolicy
from forgellm.multimodal.inputs import vision_prompt_builder
from forgellm.outputs import RequestOutput

logger = logging.getLogger(__name__)

# Exit status of an engine process that stopped because its engine failed.
CHILD_EXIT_ENGINE_FAILED = 3


class ProcessAsyncLLM(AsyncLLM):
    """AsyncLLM's interface (add_request, generate, abort, stats, ...) over an engine in a child process."""

    def __init__(
        self,
        model: str | None = None,
        *,
        config: EngineConfig | None = None,
        max_waiting_requests: int | None = DEFAULT_MAX_WAITING_REQUESTS,
        **kwargs: Any,
    ) -> None:
        """Start the child, which builds the engine from `model`/options or `config`; returns once it is ready."""
        config = _engine_config(model, config, kwargs)
        self._init_front_end(config, max_waiting_requests)
        context = mp.get_context("spawn")  # never fork a process that may hold CUDA state
        self._conn, child_conn = context.Pipe()
        log_level = logging.getLogger("forgellm").getEffectiveLevel()
        self._process = context.Process(
            target=_child_main, args=(config, child_conn, log_level), name="forgellm-engine", daemon=True
        )
        self._process.start()
        child_conn.close()
        self._stopping = False
        try:
            message = self._conn.recv()
        except EOFError:
            self._process.join(10)
            raise EngineDeadError(
                f"the engine process exited while loading the model (exit code {self._process.exitcode})"
            ) from None
        if message[0] == "dead":
            self._process.join(10)
            raise decode_error(message[1])
        _, limits, stats, self.model_info = message
        model_dir = resolve_model_dir(config.model)
        self._tokenizer = Tokenizer.from_dir(resolve_tokenizer_dir(config, model_dir))
        arch = load_model_config(model_dir)
        vision = vision_prompt_builder(model_dir, arch, config.limit_mm_per_prompt)
        self._input_processor = InputProcessor(
            self._tokenizer, limits, load_generation_defaults(model_dir), vision=vision
        )
        self.media_policy = MediaPolicy.from_options(config.allowed_local_media_path, config.allowed_media_domains)
        self._snapshot = _Snapshot(stats, 0)
        self._outbox: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write, name="forgellm-engine-writer", daemon=True)
        self._reader = threading.Thread(target=self._read, name="forgellm-engine-reader", daemon=True)
        self._writer.start()
        self._reader.start()

    @property
    def exitcode(self) -> int | None:
        """The engine process's exit status once it has ended (None while it runs)."""
        return self._process.exitcode

    def _send(self, command: Command) -> None:
        self._outbox.put(command)

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stop the child (running requests end with EngineDeadError) and the tokenizer pool."""
        self._stopping = True
        self._send(StopCommand())
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout)
        self._reader.join(timeout)
        self._fail_everything(EngineDeadError("the engine was shut down"))
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _write(self) -> None:
        while True:
            command = self._outbox.get()
            try:
                self._conn.send(command)
            except (OSError, ValueError):  # the child is gone; the reader reports it
                return
            if isinstance(command, StopCommand):
                return

    def _read(self) -> None:
        """Deliver the child's messages; on anything unexpected, declare the engine dead (never die silently)."""
        try:
            while True:
                try:
                    message = self._conn.recv()
                except (EOFError, OSError):
                    code = self._process.exitcode
                    self._process.join(1)
                    code = self._process.exitcode if code is None else code
                    if self._stopping:
                        reason = "the engine was shut down"
                    else:
                        reason = f"the engine process exited (exit code {code})"
                    self._fail_everything(EngineDeadError(reason))
                    return
                if message[0] == "step":
                    _, wires, refused, stats, consumed = message
                    self._deliver(wires, [(wire_id, decode_error(error)) for wire_id, error in refused])
                    self._snapshot = _Snapshot(stats, consumed)
                elif message[0] == "dead":
                    detail = decode_error(message[1])
                    self._fail_everything(EngineDeadError(f"the engine failed and stopped serving: {detail}"))
                    return
                else:
                    raise ValueError(f"unknown message from the engine process: {message[0]!r}")
        except Exception as exc:
            logger.exception("the engine process's reader failed; the engine is dead")
            self._fail_everything(EngineDeadError(f"lost the engine process: {exc!r}"))
            if self._process.is_alive():
                self._process.terminate()

    @staticmethod
    def _wire_id_of(out: Any) -> str:
        return wire_request_id(out)

    @staticmethod
    def _to_output(out: Any, pending: _Pending) -> RequestOutput:
        return decode_output(out, pending.request_id, pending.prompt, pending.prompt_token_ids)


def _child_main(config: EngineConfig, conn: Any, log_level: int) -> None:
    """The engine process: build the engine, report ready, then run the EngineLoop over the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle; it stops us via the pipe
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s (engine process): %(message)s")
    try:
        engine = LLMEngine(config)
    except BaseException as exc:  # e.g. a ModelLoadError: the server re-raises it
        conn.send(("dead", encode_error(exc)))
        return

    def receive(block: bool) -> list[Command]:
        commands = [conn.recv()] if block else []
        while conn.poll():
            commands.append(conn.recv())
        return commands

    def publish(report: StepReport) -> None:
        wires = [encode_output(out) for out in report.outputs]
        refused = [(wire_id, encode_error(exc)) for wire_id, exc in report.refused]
        conn.send(("step", wires, refused, report.stats, report.sequences_consumed))

    conn.send(("ready", engine.limits, engine.stats(), engine.model_info))
    try:
        _serve(engine, receive, publish, conn)
    finally:
        engine.shutdown()  # tensor-parallel workers end with the engine, however it ends


def _serve(engine: LLMEngine, receive: Any, publish: Any, conn: Any) -> None:
    """Run the EngineLoop until the server stops it, reporting a failure over the pipe."""
    try:
        EngineLoop(engine, receive, publish).run()
    except (EOFError, BrokenPipeError):  # the server process is gone
        return
    except BaseException as exc:
        logging.getLogger(__name__).exception("the engine failed")
        error = exc if isinstance(exc, ForgeLLMError) else EngineDeadError(f"{type(exc).__name__}: {exc}")
        try:
            conn.send(("dead", encode_error(error)))
        except OSError:
            pass
        raise SystemExit(CHILD_EXIT_ENGINE_FAILED) from None
