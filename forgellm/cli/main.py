"""The `forgellm` command: parses arguments and dispatches to one subcommand module."""

from __future__ import annotations

import argparse
import os
import sys

import forgellm
from forgellm.cli import bench, chat, eval, generate, quantize, serve

# Each module registers its subparser and sets `handler`; build joins this tuple when it exists.
SUBCOMMANDS = (generate, chat, bench, serve, eval, quantize)


def version() -> str:
    """forgellm's version: the package attribute, else the installed distribution's, else 'unknown'."""
    found = getattr(forgellm, "__version__", None)
    if found:
        return str(found)
    import importlib.metadata  # only when the attribute is missing: it costs start-up time

    try:
        return importlib.metadata.version("forgellm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every implemented subcommand."""
    parser = argparse.ArgumentParser(
        prog="forgellm",
        description="Run Hugging Face language models: generate text or chat.",
    )
    parser.add_argument("--version", action="version", version=f"forgellm {version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]) and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); point stdout at devnull so the exit flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
