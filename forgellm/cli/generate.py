"""`forgellm generate`: complete one prompt and stream the text to stdout."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from forgellm.cli.engine_args import add_engine_args, engine_config_from_args
from forgellm.cli.images import add_image_arg, image_chat_prompt
from forgellm.cli.sampling_args import add_sampling_args, sampling_params_from_args
from forgellm.cli.streaming import stream_to
from forgellm.errors import ForgeLLMError, InvalidRequestError

EXIT_ERROR = 2


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `generate` subcommand."""
    parser = subparsers.add_parser(
        "generate",
        help="complete a prompt",
        description=(
            "Complete PROMPT and stream the text to stdout; a summary (tokens, tokens/s) goes to "
            "stderr. Without --model the embedded demo model is used (a small Llama trained on Python source)."
        ),
    )
    parser.add_argument(
        "prompt",
        nargs="?",
        default=None,
        metavar="PROMPT",
        help=(
            "text to complete, taken as typed (no backslash escapes, so code keeps its backslashes); "
            "'-' or nothing reads it from stdin (one trailing newline is dropped)"
        ),
    )
    add_image_arg(parser, "the prompt then goes through the chat template as one user message, images first")
    add_sampling_args(parser)
    add_engine_args(parser)
    parser.set_defaults(handler=run)
    return parser


def read_prompt(prompt: str | None, stdin: TextIO) -> str:
    """The prompt argument, or stdin's text when the argument is '-' or absent and stdin is piped."""
    if prompt is not None and prompt != "-":
        return prompt
    if prompt is None and stdin.isatty():
        raise InvalidRequestError("no prompt: pass PROMPT, or pipe text on stdin", param="prompt")
    text = stdin.read()
    # `echo text | forgellm generate` appends a newline the user did not mean as part of the prompt.
    return text[:-1] if text.endswith("\n") else text


def run(args: argparse.Namespace) -> int:
    """Generate one completion; exit 2 with `error: ...` on any forgellm error."""
    try:
        prompt = read_prompt(args.prompt, sys.stdin)
        # The engine's --seed also seeds this request, so one flag makes the run reproducible.
        params = sampling_params_from_args(args, seed=getattr(args, "seed", None))
        config = engine_config_from_args(args)
        # Imported here so `--help` and argument errors do not pay for loading torch and the engine.
        from forgellm import LLM

        llm = LLM(config=config)
        request = image_chat_prompt(llm, [{"role": "user", "content": prompt}], args.image) if args.image else prompt
        result = stream_to(llm, request, params, sys.stdout)
    except ForgeLLMError as exc:
        sys.stdout.flush()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    sys.stdout.write("\n")
    sys.stdout.flush()
    print(result.summary(), file=sys.stderr)
    return 0
