"""Sampling flags shared by `generate` and `chat`, turned into a validated SamplingParams."""

from __future__ import annotations

import argparse

from forgellm.cli.escapes import ESCAPES_HELP, escaped_text
from forgellm.sampling_params import SamplingParams

DEFAULT_MAX_TOKENS = 256


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """Add --max-tokens, --temperature, --top-p, --top-k, --stop and --ignore-eos to `parser`.

    The seed is the engine's `--seed` (added with the engine flags), so there is one seed flag.
    """
    group = parser.add_argument_group("sampling options")
    group.add_argument(
        "--max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        metavar="N",
        help=f"most tokens to generate per answer (default: {DEFAULT_MAX_TOKENS})",
    )
    # SUPPRESS leaves unset values to SamplingParams' own defaults instead of repeating them here.
    group.add_argument(
        "--temperature",
        type=float,
        default=argparse.SUPPRESS,
        metavar="T",
        help="sampling temperature; 0 is greedy (default: 1.0)",
    )
    group.add_argument(
        "--top-p",
        type=float,
        default=argparse.SUPPRESS,
        metavar="P",
        help="nucleus sampling: keep the smallest set of tokens whose probability reaches P (default: 1.0)",
    )
    group.add_argument(
        "--top-k",
        type=int,
        default=argparse.SUPPRESS,
        metavar="K",
        help="keep only the K most likely tokens; -1 keeps all (default: -1)",
    )
    group.add_argument(
        "--stop",
        action="append",
        type=escaped_text,
        default=argparse.SUPPRESS,
        metavar="STR",
        help=f"stop when the output contains STR (not included in the output); repeat for several; {ESCAPES_HELP}",
    )
    group.add_argument(
        "--ignore-eos",
        action="store_true",
        default=argparse.SUPPRESS,
        help="keep generating past end-of-sequence tokens, up to --max-tokens",
    )


def sampling_params_from_args(args: argparse.Namespace, seed: int | None = None) -> SamplingParams:
    """Build SamplingParams from the flags the user set; raises InvalidRequestError on bad values."""
    names = ("max_tokens", "temperature", "top_p", "top_k", "stop", "ignore_eos")
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    if seed is not None:
        values["seed"] = seed
    return SamplingParams(**values)
