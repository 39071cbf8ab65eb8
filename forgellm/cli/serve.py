"""`forgellm serve`: run the OpenAI-compatible HTTP server on one model (the demo without MODEL)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from forgellm.cli.engine_args import add_engine_args, engine_config_from_args
from forgellm.errors import ConfigError, ForgeLLMError

EXIT_ERROR = 2
API_KEY_ENV = "FORGELLM_API_KEY"
DEFAULT_SHUTDOWN_TIMEOUT = 30.0


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
        default=None,
        metavar="N",
        help="answer 429 while N sequences are queued and not yet running (default: no limit)",
    )
    group.add_argument(
        "--shutdown-timeout",
        type=float,
        default=DEFAULT_SHUTDOWN_TIMEOUT,
        metavar="SECONDS",
        help=f"on SIGTERM, let running requests finish this long, then abort (default: {DEFAULT_SHUTDOWN_TIMEOUT:g})",
    )
    group.add_argument(
        "--max-request-bytes", type=int, default=None, metavar="N", help="largest request body; larger get 413"
    )
    group.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    group.add_argument("--access-log", action="store_true", help="log every HTTP request (costs per-request time)")
    add_engine_args(parser)
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Load the model, serve until SIGTERM/SIGINT, then drain and exit 0."""
    try:
        import uvicorn

        from forgellm.engine.process_engine import ProcessAsyncLLM
        from forgellm.serve.app import build_app
        from forgellm.serve.settings import DEFAULT_MAX_REQUEST_BYTES, ServerSettings, default_model_name
    except ImportError as exc:
        print(
            f"error: forgellm serve needs {exc.name}; install it with: pip install 'forgellm[serve]'", file=sys.stderr
        )
        return EXIT_ERROR
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.model_path is not None:
            if getattr(args, "model", args.model_path) != args.model_path:
                raise ConfigError("give the model once: as MODEL or as --model, not both")
            args.model = args.model_path
        config = engine_config_from_args(args)
        settings = ServerSettings(
            served_model_names=tuple(args.served_model_name or [default_model_name(config.model)]),
            api_key=args.api_key or None,
            max_waiting_requests=args.max_waiting_requests,
            max_request_bytes=args.max_request_bytes or DEFAULT_MAX_REQUEST_BYTES,
        )
        # The engine steps in its own process: on the H200 a thread sharing the GIL with the HTTP side
        # reached 0.78 of offline throughput at concurrency 64, a process 1.01 (benchmarks/RESULTS.md).
        engine = ProcessAsyncLLM(config=config)
    except (ForgeLLMError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
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
    # uvicorn drains on SIGTERM, then re-raises the signal under the handler it found: make that
    # handler a no-op so the process goes on to stop the engine and exit 0 instead of dying by signal.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
        engine.shutdown()
    return 0 if server.started else 1
