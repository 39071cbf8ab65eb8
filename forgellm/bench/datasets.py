"""Benchmark requests: random token ids of fixed or ranged lengths, or ShareGPT-format conversations."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# A length is fixed (128) or drawn uniformly from an inclusive range ((64, 256)).
Length = int | tuple[int, int]

# ShareGPT filtering as the common benchmark scripts do it: drop very short turns (noise) and keep
# requests that fit a typical serving context.
SHAREGPT_MIN_LEN = 4
SHAREGPT_MAX_PROMPT_LEN = 1024
SHAREGPT_MAX_TOTAL_LEN = 2048


@dataclass(frozen=True)
class BenchRequest:
    """One benchmark request: its prompt as token ids and how many tokens to generate."""

    prompt_token_ids: list[int]
    output_len: int


def parse_range(text: str) -> tuple[int, int]:
    """'64:256' -> (64, 256), both ends included; rejects reversed or non-positive bounds."""
    parts = text.split(":")
    if len(parts) != 2:
        raise ValueError(f"expected a range LOW:HIGH such as 64:256, got {text!r}")
    try:
        low, high = int(parts[0]), int(parts[1])
    except ValueError:
        raise ValueError(f"range bounds must be integers, got {text!r}") from None
    if low < 1 or high < low:
        raise ValueError(f"range {text!r} needs 1 <= LOW <= HIGH")
    return low, high


def sample_lengths(rng: np.random.Generator, length: Length, count: int) -> list[int]:
    """`count` lengths: the fixed value repeated, or uniform draws from the inclusive range."""
    if isinstance(length, int):
        if length < 1:
            raise ValueError(f"lengths must be >= 1, got {length}")
        return [length] * count
    low, high = length
    return rng.integers(low, high + 1, size=count).tolist()


def random_requests(
    num_requests: int, input_len: Length, output_len: Length, vocab_size: int, seed: int = 0
) -> list[BenchRequest]:
    """Requests of uniformly random token ids; the same seed gives the same requests.

    Random ids make every prompt distinct, so the prefix cache cannot shortcut any prefill.
    """
    if num_requests < 1:
        raise ValueError(f"the number of requests must be >= 1, got {num_requests}")
    rng = np.random.default_rng(seed)
    input_lens = sample_lengths(rng, input_len, num_requests)
    output_lens = sample_lengths(rng, output_len, num_requests)
    ids = rng.integers(0, vocab_size, size=sum(input_lens)).tolist()
    requests, start = [], 0
    for n_in, n_out in zip(input_lens, output_lens):
        requests.append(BenchRequest(ids[start : start + n_in], n_out))
        start += n_in
    return requests


def _first_exchange(entry: object) -> tuple[str, str] | None:
    """(prompt, reply) from the first two turns of a ShareGPT entry, or None if it has fewer."""
    if not isinstance(entry, dict):
        return None
    turns = entry.get("conversations") or entry.get("conversation")
    if not isinstance(turns, list) or len(turns) < 2:
        return None
    texts = [turn.get("value") if isinstance(turn, dict) else None for turn in turns[:2]]
    if not all(isinstance(t, str) for t in texts):
        return None
    return texts[0], texts[1]


def load_sharegpt(
    path: str | Path,
    num_requests: int,
    encode: Callable[[str], list[int]],
    seed: int = 0,
    output_len: int | None = None,
    max_prompt_len: int = SHAREGPT_MAX_PROMPT_LEN,
    max_total_len: int = SHAREGPT_MAX_TOTAL_LEN,
) -> list[BenchRequest]:
    """Up to `num_requests` requests from a ShareGPT JSON file (a list of {"conversations": [...]}).

    The first human turn is the prompt; the reply's token count is the output length unless
    `output_len` fixes it. Entries are shuffled with `seed`; fewer are returned if too few qualify.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read dataset {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"dataset {path} is not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise ValueError(f"dataset {path} must hold a JSON list of conversations, got {type(data).__name__}")
    exchanges = [pair for pair in map(_first_exchange, data) if pair is not None]
    random.Random(seed).shuffle(exchanges)
    requests: list[BenchRequest] = []
    for prompt, reply in exchanges:
        if len(requests) == num_requests:
            break
        prompt_ids = encode(prompt)
        n_out = output_len if output_len is not None else len(encode(reply))
        if len(prompt_ids) < SHAREGPT_MIN_LEN or (output_len is None and n_out < SHAREGPT_MIN_LEN):
            continue
        if len(prompt_ids) > max_prompt_len or len(prompt_ids) + n_out > max_total_len:
            continue
        requests.append(BenchRequest(prompt_ids, n_out))
    if not requests:
        raise ValueError(f"dataset {path} has no conversation usable as a benchmark request")
    return requests
