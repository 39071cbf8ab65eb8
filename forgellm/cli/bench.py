"""`forgellm bench`: latency, throughput (offline, in-process engine) and serve (load on a server)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from forgellm.bench import engine_setup, latency, throughput

EXIT_ERROR = 2
SERVE_MODULE = "forgellm.bench.serve"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `bench` and its subcommands."""
    parser = subparsers.add_parser(
        "bench",
        help="measure latency and throughput",
        description="Benchmarks: offline latency and throughput of the engine, or load on a running server.",
    )
    benches = parser.add_subparsers(dest="bench_command", metavar="BENCHMARK")
    offline = (
        ("latency", latency, "one batch at a time: TTFT, per-token latency p50/p90/p99, tokens/s"),
        ("throughput", throughput, "all requests queued at once: requests/s, output and total tokens/s"),
    )
    for name, module, summary in offline:
        sub = benches.add_parser(
            name,
            help=summary,
            description=f"{module.__doc__.splitlines()[0]} Give --model PATH, or --model-config NAME --random-weights.",
        )
        module.add_arguments(sub)
        engine_setup.add_model_args(sub)
        sub.set_defaults(handler=module.run)
    _add_serve_parser(benches)
    parser.set_defaults(handler=_missing_benchmark(parser))
    return parser


def _missing_benchmark(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return EXIT_ERROR

    return handler


def _add_serve_parser(benches: argparse._SubParsersAction) -> None:
    """`bench serve` from forgellm.bench.serve, or a stand-in that explains why it is unavailable."""
    try:
        serve = importlib.import_module(SERVE_MODULE)
        problem = None
    except ModuleNotFoundError as exc:
        serve = None
        if exc.name == SERVE_MODULE:
            problem = "`forgellm bench serve` is not available in this forgellm yet (no forgellm.bench.serve)"
        else:
            problem = f"`forgellm bench serve` needs the {exc.name!r} package; pip install it"
    summary = "load an OpenAI-compatible server with requests and measure it"
    if serve is not None:
        sub = benches.add_parser("serve", help=summary, description=summary)
        serve.add_arguments(sub)
        sub.set_defaults(handler=serve.run)
        return
    # No option prefix: every argument, flags and --help included, is taken as text, so the
    # handler runs and explains the problem instead of argparse rejecting unknown flags.
    sub = benches.add_parser("serve", help=summary, add_help=False, prefix_chars="\0")
    sub.add_argument("ignored", nargs="*", help=argparse.SUPPRESS)

    def unavailable(args: argparse.Namespace) -> int:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_ERROR

    sub.set_defaults(handler=unavailable)
