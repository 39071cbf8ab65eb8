"""Shared by the GPU tests: prompts, greedy parameters, and counting calls to a method."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

from forgellm import SamplingParams

VOCAB = 4096  # the demo tokenizer's ids below this are ordinary tokens; the tiny fixtures share it


def greedy(max_tokens: int = 24, **overrides: Any) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, detokenize=False, **overrides)


def random_prompts(lengths: list[int], seed: int = 0) -> list[list[int]]:
    """Token-id prompts of the given lengths (ids 3.., clear of the special tokens 0-2)."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=generator).tolist() for n in lengths]


def completions(outputs) -> list[list[tuple[int, ...]]]:  # noqa: ANN001 - list[RequestOutput]
    """The token ids of every completion of every request, in order."""
    return [[tuple(c.token_ids) for c in out.outputs] for out in outputs]


def count_calls(monkeypatch, owner: object, name: str, key: Callable[..., Any] | None = None) -> Counter:  # noqa: ANN001
    """Wrap owner.name so every call is counted (under key(*args) when given); returns the live Counter."""
    original = getattr(owner, name)
    counts: Counter = Counter()

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        counts[key(*args, **kwargs) if key else name] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return counts
