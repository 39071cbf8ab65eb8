"""`forgellm serve`: run the OpenAI-compatible HTTP server on one model (the demo without MODEL)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time

from forgellm.cli.engine_args import add_engine_args, engine_config_from_args
from forgellm.config import DEFAULT_MAX_WAITING_REQUESTS
from forgellm.errors import ConfigError, ForgeLLMError
from forgellm.serve.settings import DEFAULT_MAX_PROMPTS_PER_REQUEST, DEFAULT_MAX_REQUEST_BYTES

EXIT_ERROR = 2
EXIT_ENGINE_DIED = 1  # the engine failed while serving: a supervisor should restart the server
API_KEY_ENV = "FORGELLM_API_KEY"
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
# After the engine dies the server answers 503 for this long (streams get their error events,
# health checks see it), then exits non-zero.
DEAD_ENGINE_EXIT_DELAY_S = 2.0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `serve` subcommand."""
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API",
        description=(
            "Serve MODEL (a local Hugging Face checkpoint directory; the embedded demo without it) with "
            "OpenAI's /v1/chat/completions and /v1/completions, plus /v1/models, /health, /metrics, "
            "/tokenize and /detokenize. Needs the serve extra: pip install 'forgellm[serve]'."
        ),
    )
    parser.add_argument("model_path", nargs="?", default=None, metavar="MODEL", help="model directory (or --model)")
    group = parser.add_argument_group("server options")
    group.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    group.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    group.add_argument(
        "--served-model-name",
        nargs="+",
        default=None,
        metavar="NAME",
        help="names clients may use in 'model'; the first is reported (default: the model directory's name)",
    )
    group.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"require 'Authorization: Bearer KEY' on the API routes (default: ${API_KEY_ENV}, else none)",
    )
    group.add_argument(
        "--max-waiting-requests",
        type=int,
        default=DEFAULT_MAX_WAITING_REQUESTS,
        metavar="N",
        help="answer 429 while N sequences (n per request, prompts tokenizing included) wait for a seat "
        f"(default: {DEFAULT_MAX_WAITING_REQUESTS})",
    )
    group.add_argument(
        "--tool-call-parser",
        choices=["hermes", "llama3_json", "mistral"],
        default="hermes",
        help="the served model's tool-call syntax: hermes (Qwen2.5, Qwen3, Hermes; the demo's), llama3_json, "
        "mistral (default: hermes)",
    )
    group.add_argument(
        "--reasoning-parser",
        choices=["qwen3", "deepseek_r1"],
        default=None,
        help="move a reasoning model's <think>...</think> into reasoning_content (default: none)",
    )
    group.add_argument(
        "--max-prompts-per-request",
        type=int,
        default=DEFAULT_MAX_PROMPTS_PER_REQUEST,
        metavar="N",
        help=f"most prompts in one /v1/completions request (default: {DEFAULT_MAX_PROMPTS_PER_REQUEST})",
    )
    group.add_argument(
        "--shutdown-timeout",
        type=float,
        default=DEFAULT_SHUTDOWN_TIMEOUT,
        metavar="SECONDS",
        help=f"on SIGTERM, let running requests finish this long, then abort (default: {DEFAULT_SHUTDOWN_TIMEOUT:g})",
    )
    group.add_argument(
        "--max-request-bytes",
        type=int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        metavar="N",
        help=f"largest request body in bytes; larger get 413 (default: {DEFAULT_MAX_REQUEST_BYTES // 2**20} MiB)",
    )
    group.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    group.add_argument("--access-log", action="store_true", help="log every HTTP request (costs per-request time)")
    add_engine_args(parser)
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Load the model, serve until SIGTERM/SIGINT (drain, exit 0) or until the engine dies (exit 1)."""
    try:
        import uvicorn

        from forgellm.engine.process_engine import ProcessAsyncLLM
        from forgellm.serve.app import build_app
        from forgellm.serve.settings import ServerSettings, default_model_name
    except ImportError as exc:
        print(
            f"error: forgellm serve needs {exc.name}; install it with: pip install 'forgellm[serve]'", file=sys.stderr
        )
        return EXIT_ERROR
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    logger = logging.getLogger("forgellm.serve")
    try:
        if args.model_path is not None:
            if getattr(args, "model", args.model_path) != args.model_path:
                raise ConfigError("give the model once: as MODEL or as --model, not both")
            args.model = args.model_path
        config = engine_config_from_args(args)
        settings = ServerSettings(
            served_model_names=tuple(args.served_model_name or [default_model_name(config.model)]),
            api_key=args.api_key or None,
            max_request_bytes=args.max_request_bytes,
            max_prompts_per_request=args.max_prompts_per_request,
            tool_call_parser=args.tool_call_parser,
            reasoning_parser=args.reasoning_parser,
        )
        from forgellm.distributed.torchrun import INIT_METHOD, check_torchrun_config, torchrun_rank

        launched = torchrun_rank()
        if launched is not None:  # torchrun started this process as one rank of the engine
            check_torchrun_config(config, launched)
            if launched.rank > 0:  # its shard only, no HTTP; it ends when rank 0 stops the engine
                from forgellm.worker.tp_worker import run_worker

                logger.warning("torchrun rank %d of %d: running its shard", launched.rank, launched.world_size)
                run_worker(config, launched.rank, launched.world_size, INIT_METHOD, local_rank=launched.local_rank)
                return 0
        if config.node_rank > 0:  # a node other than the first: its ranks only, no HTTP
            from forgellm.distributed.executor import run_node
            from forgellm.distributed.placement import ranks_per_node

            per_node = ranks_per_node(config)
            first = config.node_rank * per_node
            logger.warning(
                "node %d of %d: running ranks %d-%d, meeting node 0 at %s:%d",
                config.node_rank, config.nnodes, first, first + per_node - 1, config.master_addr, config.master_port,
            )  # fmt: skip
            return run_node(config)
        if args.max_waiting_requests < 1:
            raise ConfigError(f"--max-waiting-requests must be >= 1, got {args.max_waiting_requests}")
        # Bind before the engine loads: a taken port fails at once, not after minutes of loading, and no socket the
        # engine opens meanwhile (a rank's ephemeral gloo port) can take the one asked for.
        listener = _bind(args.host, args.port)
        # The engine steps in its own process: on the H200 a thread sharing the GIL with the HTTP side
        # reached 0.78 of offline throughput at concurrency 64, a process 1.01 (benchmarks/RESULTS.md).
        if config.data_parallel_size > 1:  # replicas behind this one front, each request to the least loaded
            from forgellm.engine.data_parallel import DataParallelEngine

            engine = DataParallelEngine.start(ProcessAsyncLLM, config, max_waiting_requests=args.max_waiting_requests)
        else:
            engine = ProcessAsyncLLM(config=config, max_waiting_requests=args.max_waiting_requests)
    except (ForgeLLMError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    logger.info(
        "serving %s on http://%s:%d (at most %d sequences waiting, %d prompts a request, %d-byte bodies)",
        list(settings.served_model_names),
        args.host,
        args.port,
        args.max_waiting_requests,
        settings.max_prompts_per_request,
        settings.max_request_bytes,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(engine, settings),
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=args.access_log,
            timeout_graceful_shutdown=args.shutdown_timeout,  # type: ignore[arg-type]  # a float works
        )
    )
    engine_died = threading.Event()
    watchdog = threading.Thread(
        target=_stop_when_engine_dies, args=(engine, server, engine_died), name="forgellm-watchdog", daemon=True
    )
    watchdog.start()
    # uvicorn drains on SIGTERM, then re-raises the signal under the handler it found: make that
    # handler a no-op so the process goes on to stop the engine and exit 0 instead of dying by signal.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run(sockets=[listener])
    finally:
        signal.signal(signal.SIGTERM, previous)
        engine.shutdown()
    if engine_died.is_set():
        logger.error("exiting with status %d: the engine failed", EXIT_ENGINE_DIED)
        return EXIT_ENGINE_DIED
    return 0 if server.started else 1


def _bind(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound now (an OSError naming the address when it is taken)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


def _stop_when_engine_dies(engine, server, died: threading.Event) -> None:  # noqa: ANN001 - uvicorn types
    """Once the engine is dead (not shut down by us), let callers see 503s briefly, then stop the server."""
    while engine.is_alive and not server.should_exit:
        time.sleep(0.05)
    if engine.is_alive:  # a normal shutdown
        return
    died.set()
    logging.getLogger("forgellm.serve").error(
        "the engine is dead; /health answers 503 and the server exits in %.0f s", DEAD_ENGINE_EXIT_DELAY_S
    )
    time.sleep(DEAD_ENGINE_EXIT_DELAY_S)
    server.should_exit = True
