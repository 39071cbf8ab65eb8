"""`forgellm eval`: perplexity of a model on text, and greedy agreement of a draft model with it."""

from __future__ import annotations

import argparse
import dataclasses
import gc
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
            "--model the embedded demo model is measured. Give --model two or more times to compare "
            "models on the same tokens, in one table: each model's perplexity change relative to the "
            "first, and how often its top-1 next token equals the first's (the models must share a "
            "tokenizer; the window defaults to the shortest context of them)."
        ),
    )
    ppl.add_argument(
        "--model",
        dest="models",
        action="append",
        default=None,
        metavar="PATH",
        help="a Hugging Face model directory (default: the embedded demo); repeat to compare models",
    )
    _add_text_args(ppl)
    add_engine_args(ppl, exclude=("model",))
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


def _scores(args: argparse.Namespace, model: str | None, texts: list[str], window: int | None = None) -> TokenScores:
    """Score `texts` with `model` (None: the demo), under the engine flags the user gave."""
    # Imported here so `--help` and argument errors do not pay for loading torch and the engine.
    from forgellm import LLM
    from forgellm.eval import score_texts

    config = dataclasses.replace(engine_config_from_args(args), model=model)
    return score_texts(LLM(config=config), texts, window or args.window, args.stride)


def run_perplexity(args: argparse.Namespace) -> int:
    """Print the perplexity, unigram baseline and top-1 accuracy of --model (or of each --model) on the text."""
    from forgellm.eval import perplexity_report, read_texts

    models = args.models or [None]
    try:
        texts = read_texts(args.file, args.dir, args.pattern)
        if len(models) > 1:
            numbers = _compare_models(args, models, texts)
        else:
            report = perplexity_report(_scores(args, models[0], texts))
    except (ForgeLLMError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if len(models) > 1:
        print(json.dumps(numbers) if args.json else _comparison_table(numbers))
        return 0
    _report(args, {"model": models[0] or "demo", "files": len(texts), **report.as_dict()})
    return 0


def _shortest_window(args: argparse.Namespace, models: list[str]) -> int:
    """max_model_len - 1 of the model with the shortest context; checks every model directory first."""
    from forgellm.engine.llm_engine import resolve_max_model_len, resolve_model_dir
    from forgellm.hf.config import load_model_config

    base = engine_config_from_args(args)
    return min(resolve_max_model_len(base, load_model_config(resolve_model_dir(m))) for m in models) - 1


def _compare_models(args: argparse.Namespace, models: list[str], texts: list[str]) -> dict:
    """Score the same windows with each model in turn; each after the first is compared with the first."""
    from forgellm.eval import greedy_agreement, perplexity_report

    # Checked before any model loads, so a typo in the last --model does not cost the others' runs.
    window = _shortest_window(args, models)
    window = args.window or window
    rows: list[dict] = []
    first: TokenScores | None = None
    for model in models:
        scores = _scores(args, model, texts, window)
        gc.collect()  # the previous engine's weights go before the next model loads
        report = perplexity_report(scores)
        row: dict = {"model": model, **report.as_dict(), "perplexity_change_pct": None, "top1_agreement": None}
        if first is None:
            first, first_ppl = scores, report.perplexity
        elif scores.token_ids == first.token_ids:  # other tokenizers: neither number would mean anything
            row["perplexity_change_pct"] = round(100.0 * (report.perplexity / first_ppl - 1.0), 3)
            row["top1_agreement"] = round(greedy_agreement(first, scores), 5)
        rows.append(row)
    return {"files": len(texts), "window": window, "models": rows}


def _comparison_table(numbers: dict) -> str:
    """One row per model: tokens, perplexity, unigram baseline, top-1 accuracy, change and agreement vs the first."""

    def percent(value: float | None, signed: bool = False) -> str:
        if value is None:
            return "-"
        return f"{value:+.2f}%" if signed else f"{100 * value:.2f}%"

    header = ("model", "tokens", "perplexity", "unigram ppl", "top-1 accuracy", "change", "top-1 agreement")
    rows = [header]
    for index, row in enumerate(numbers["models"]):
        rows.append(
            (
                row["model"],
                str(row["tokens"]),
                f"{row['perplexity']:.4f}",
                f"{row['unigram_perplexity']:.2f}",
                percent(row["top1_accuracy"]),
                "(reference)" if index == 0 else percent(row["perplexity_change_pct"], signed=True),
                "(reference)" if index == 0 else percent(row["top1_agreement"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    footer = f"files: {numbers['files']}; window: {numbers['window']} tokens; change and agreement are vs the first"
    return "\n".join([*lines, footer])


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
