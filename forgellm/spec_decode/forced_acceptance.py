"""Forced acceptance at a chosen rate, for measuring speculation on models with random weights.

Random weights make a draft model agree with the target almost never, so a measured speed-up would say
nothing. The first design replayed the target's recorded greedy continuation as drafts, corrupted at
rate 1 - a; on the H200 it failed: random weights give nearly flat logits whose argmax flips with the
last bit, and verify steps (k + 1 positions through the prefill kernels, other GEMM shapes) round
differently from the recording run, so the continuation stopped matching after a few tokens.

Forced acceptance keeps every cost real and sets the acceptance directly: the real proposer drafts,
the real verification runs (its result is computed, then set aside), and each request accepts its
drafts up to the first failed coin flip, every flip succeeding with probability a; the token after
them is the target's argmax there. The step's shapes, kernels, synchronisations and KV writes are
those of real speculation with a per-position acceptance of a. The text is meaningless; figures
measured this way hold "at acceptance a", not for any real draft model.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from forgellm.engine.request import Request
from forgellm.errors import ConfigError
from forgellm.spec_decode.verify import VerifyOutput, verify_drafts


class ForcedAcceptance:
    """A drop-in for `verify_drafts` that accepts each draft position with probability `acceptance`."""

    def __init__(self, acceptance: float, seed: int = 0) -> None:
        if not 0.0 <= acceptance <= 1.0:
            raise ConfigError(f"forced acceptance must be in [0, 1], got {acceptance}")
        self.acceptance = acceptance
        self.rng = random.Random(seed)

    def __call__(
        self,
        logits: torch.Tensor,
        requests: Sequence[Request],
        drafts: Sequence[list[int]],
        generators: Sequence[torch.Generator | None],
        default_generator: torch.Generator | None,
    ) -> VerifyOutput:
        """[B, k + 1] emitted tokens (-1 padded): accepted drafts, then the target's argmax at the next position."""
        real = verify_drafts(logits, requests, drafts, generators, default_generator)  # the real work
        width = 1 + max(len(d) for d in drafts)
        rows, emitted = [], []
        first = 0
        for draft in drafts:
            accepted = 0
            while accepted < len(draft) and self.rng.random() < self.acceptance:
                accepted += 1
            rows.append(first + accepted)
            emitted.append(draft[:accepted])
            first += 1 + len(draft)
        choices = logits[torch.tensor(rows, device=logits.device)].argmax(dim=-1).tolist()
        tokens = [e + [c] + [-1] * (width - 1 - len(e)) for e, c in zip(emitted, choices)]
        # The real logprobs rows stay: they score the real result's tokens, a cost kept, not a figure reported.
        return VerifyOutput(torch.tensor(tokens, dtype=torch.int64, device=logits.device), real.logprobs)
