"""Replayed proposals at a chosen acceptance, for measuring speculation on models with random weights.

Random weights make a draft model agree with the target almost never, so a measured speed-up would say
nothing. The replay proposer runs the real proposer (a draft model of the right shape, at its real
cost) and then throws its guesses away: it proposes the target's own greedy continuation, recorded by
a first run of the same prompt, with each token replaced by a wrong one with probability 1 - a. Greedy
verification accepts a token exactly when it was left intact, so every draft position is accepted
with probability a, independently, and the output is the recorded continuation again. Figures
measured this way hold "at acceptance a", not for any real draft model.

The recording run speculates too, with k random tokens per step (almost never accepted): random
weights give nearly flat logits whose argmax flips with the last bit, so the continuation must come
from the same computation as the measured run (a verify step's k + 1 positions), not from plain decoding.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from forgellm.engine.request import Request
from forgellm.errors import ConfigError
from forgellm.spec_decode.decoder import Proposer


class ReplayProposer:
    """Wraps a proposer: runs it, then proposes recorded greedy continuations corrupted at rate 1 - acceptance."""

    def __init__(self, inner: Proposer, acceptance: float, vocab_size: int, seed: int = 0) -> None:
        if not 0.0 <= acceptance <= 1.0:
            raise ConfigError(f"replay acceptance must be in [0, 1], got {acceptance}")
        self.inner = inner
        self.acceptance = acceptance
        self.vocab_size = vocab_size
        self.rng = random.Random(seed)
        self.continuations: dict[tuple[int, ...], list[int]] = {}

    def record(self, prompt_token_ids: Sequence[int], output_token_ids: Sequence[int]) -> None:
        """Remember a prompt's greedy continuation (from a run with this proposer proposing nothing for it)."""
        self.continuations[tuple(prompt_token_ids)] = list(output_token_ids)

    def propose_for(self, requests: Sequence[Request], ks: Sequence[int]) -> list[list[int]]:
        """The inner proposer's work, then the recorded continuation (corrupted) for requests that have one,
        and k random tokens for requests being recorded."""
        self.inner.propose_for(requests, ks)
        return [self._replay(request, k) for request, k in zip(requests, ks)]

    def _replay(self, request: Request, k: int) -> list[int]:
        if k < 1:
            return []
        continuation = self.continuations.get(tuple(request.prompt_token_ids))
        if continuation is None:
            return [self.rng.randrange(self.vocab_size) for _ in range(k)]
        done = request.num_output_tokens
        return [self._corrupt(token) for token in continuation[done : done + k]]

    def _corrupt(self, token: int) -> int:
        if self.rng.random() < self.acceptance:
            return token
        return (token + self.rng.randrange(1, self.vocab_size)) % self.vocab_size  # any other token
