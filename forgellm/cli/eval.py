"""`forgellm eval`: perplexity of a model on text, and greedy agreement of a draft model with it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from forgellm.cli.engine_args import add_engine_args, engine_config_from_args
from forgellm.errors import ForgeLLMError

if TYPE_CHECKING:
    from forgellm.eval.scoring import TokenScores

EXIT_ERROR = 2
WINDOW_HELP = (
    "tokens per scoring window (default: max_model_len - 1); the first token of a window is "
    "context only, unless --stride overlaps the windows"
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `eval` and its `perplexity` and `agreement` subcommands."""
    parser = subparsers.add_parser(
        "eval",
        help="measure perplexity and draft agreement",
        description="Accuracy measurements through forgellm's own engine (prompt logprobs).",
    )
    evals = parser.add_subparsers(dest="eval_command", metavar="MEASURE")
    ppl = evals.add_parser(
        "perplexity",
        help="perplexity of --model on a text file or folder, beside the unigram baseline",
        description=(
            "Perplexity = exp(mean negative log-likelihood) of the text's tokens under the model, "
            "scored in windows that fit its context. The unigram baseline is the perplexity of the "
            "text's own token frequencies: the best a model without context can do. Without "
            "--model the embedded demo model is measured."
        ),
    )
    _add_text_args(ppl)
    add_engine_args(ppl)
    ppl.set_defaults(handler=run_perplexity)
    agree = evals.add_parser(
        "agreement",
        help="how often a draft model's top-1 token equals the target's on a text",
        description=(
            "Greedy agreement: the fraction of positions where --draft's most likely next token "
            "equals --model's. It is the acceptance rate of one greedily drafted token."
        ),
    )
    agree.add_argument("--draft", required=True, metavar="PATH", help="the draft model's directory")
    _add_text_args(agree)
    add_engine_args(agree)
    agree.set_defaults(handler=run_agreement)
    parser.set_defaults(handler=_print_help(parser))
    return parser


def _add_text_args(parser: argparse.ArgumentParser) -> None:
    """--file or --dir, and how to cut the text into scoring windows."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", metavar="TEXT", help="a UTF-8 text file to evaluate on")
    source.add_argument("--dir", metavar="FOLDER", help="evaluate on every file of this folder (name order)")
    parser.add_argument("--pattern", default="*", help="with --dir: which file names to read (default: *)")
    parser.add_argument("--window", type=int, default=None, metavar="N", help=WINDOW_HELP)
    parser.add_argument("--stride", type=int, default=None, metavar="N", help="window start spacing (default: N)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _print_help(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """A handler for `forgellm eval` without a measure: print the help, exit 2."""

    def handler(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return EXIT_ERROR

    return handler


def _report(args: argparse.Namespace, numbers: dict) -> None:
    """Print `numbers` as `key: value` lines, or as one JSON object with --json."""
    if args.json:
        print(json.dumps(numbers))
        return
    for key, value in numbers.items():
        print(f"{key.replace('_', ' ')}: {value}")


def _scores(args: argparse.Namespace, model: str | None, texts: list[str]) -> TokenScores:
    """Score `texts` with `model` (None: the demo), under the engine flags the user gave."""
    # Imported here so `--help` and argument errors do not pay for loading torch and the engine.
    from forgellm import LLM
    from forgellm.eval import score_texts

    config = dataclasses.replace(engine_config_from_args(args), model=model)
    return score_texts(LLM(config=config), texts, args.window, args.stride)


def run_perplexity(args: argparse.Namespace) -> int:
    """Print the perplexity, unigram baseline and top-1 accuracy of --model on the text."""
    from forgellm.eval import perplexity_report, read_texts

    try:
        texts = read_texts(args.file, args.dir, args.pattern)
        report = perplexity_report(_scores(args, getattr(args, "model", None), texts))
    except (ForgeLLMError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    _report(args, {"model": getattr(args, "model", None) or "demo", "files": len(texts), **report.as_dict()})
    return 0


def run_agreement(args: argparse.Namespace) -> int:
    """Print the greedy agreement of --draft with --model on the text."""
    from forgellm.eval import greedy_agreement, read_texts

    try:
        texts = read_texts(args.file, args.dir, args.pattern)
        target = _scores(args, getattr(args, "model", None), texts)
        draft = _scores(args, args.draft, texts)
        rate = greedy_agreement(target, draft)
    except (ForgeLLMError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    numbers = {"model": getattr(args, "model", None) or "demo", "draft": args.draft, "files": len(texts)}
    _report(args, {**numbers, "tokens": len(target.token_ids), "greedy_agreement": round(rate, 5)})
    return 0
