"""`forgellm chat`: an interactive conversation rendered with the model's chat template."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from forgellm.cli.engine_args import add_engine_args, engine_config_from_args
from forgellm.cli.escapes import ESCAPES_HELP, escaped_text
from forgellm.cli.images import add_image_arg, image_chat_prompt
from forgellm.cli.sampling_args import add_sampling_args, sampling_params_from_args
from forgellm.cli.streaming import stream_to
from forgellm.errors import ContextLengthError, ForgeLLMError
from forgellm.sampling_params import SamplingParams

PROMPT = ">>> "
EXIT_COMMANDS = ("/exit", "/quit")
RESET_COMMAND = "/reset"
EXIT_ERROR = 2
# A lone word after a slash is a command; "/usr/bin is where?" is a question.
_COMMAND_RE = re.compile(r"/\w+")

Message = dict[str, Any]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `chat` subcommand."""
    parser = subparsers.add_parser(
        "chat",
        help="chat interactively",
        description=(
            "Chat with a model: type a message, the answer streams back. /reset clears the "
            "conversation, /exit (or end of input) quits. Without --model the embedded demo "
            "model is used (a 20M-parameter Llama trained on Python source and docs)."
        ),
    )
    parser.add_argument(
        "--system",
        metavar="TEXT",
        type=escaped_text,
        default=None,
        help=f"system prompt opening the conversation; {ESCAPES_HELP}",
    )
    add_image_arg(parser, "shown with the first message")
    add_sampling_args(parser)
    add_engine_args(parser)
    parser.set_defaults(handler=run)
    return parser


def new_history(system: str | None) -> list[Message]:
    """A conversation holding only the system prompt, if any."""
    return [{"role": "system", "content": system}] if system else []


def _enable_line_editing() -> None:
    # Importing readline gives input() arrow keys and recall; only worth it on a terminal.
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401
        except ImportError:
            pass


def run(args: argparse.Namespace) -> int:
    """Load the model, then answer messages until /exit or end of input."""
    try:
        params = sampling_params_from_args(args)
        config = engine_config_from_args(args)
        # Imported here so `--help` and argument errors do not pay for loading torch and the engine.
        from forgellm import LLM

        llm = LLM(config=config)
    except ForgeLLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    _enable_line_editing()
    print(f"{RESET_COMMAND} clears the conversation, {EXIT_COMMANDS[0]} quits", file=sys.stderr)
    chat_loop(llm, params, args.system, args.image)
    return 0


def chat_loop(llm: Any, params: SamplingParams, system: str | None, images: list[str] | None = None) -> None:
    """Read lines from stdin and stream answers to stdout, keeping the conversation history; `images` (paths)
    go with the first message (and stay in the history)."""
    history = new_history(system)
    while True:
        try:
            line = input(PROMPT)
        except (EOFError, KeyboardInterrupt):
            print()
            return
        text = line.strip()
        if text in EXIT_COMMANDS:
            return
        if text == RESET_COMMAND:
            history = new_history(system)
            print("(conversation cleared)", file=sys.stderr)
            continue
        if _COMMAND_RE.fullmatch(text):
            print(f"unknown command {text}; use {RESET_COMMAND} or {EXIT_COMMANDS[0]}", file=sys.stderr)
            continue
        if not text:
            continue
        user_message: Message = {"role": "user", "content": text}
        if images and not any(m["role"] == "user" for m in history):
            user_message["content"] = [
                *({"type": "image", "image": path} for path in images),
                {"type": "text", "text": text},
            ]
        answer = answer_turn(llm, params, history + [user_message])
        if answer is not None:
            history += [user_message, {"role": "assistant", "content": answer}]


def answer_turn(llm: Any, params: SamplingParams, messages: list[Message]) -> str | None:
    """Stream the assistant's answer to `messages`; None (history unchanged) on error or Ctrl-C."""
    try:
        result = stream_to(llm, image_chat_prompt(llm, messages), params, sys.stdout)
    except ForgeLLMError as exc:
        sys.stdout.flush()
        hint = f" ({RESET_COMMAND} starts a shorter conversation)" if isinstance(exc, ContextLengthError) else ""
        print(f"error: {exc}{hint}", file=sys.stderr)
        return None
    except KeyboardInterrupt:
        print("\n(interrupted)", file=sys.stderr)
        return None
    print()
    return result.text
