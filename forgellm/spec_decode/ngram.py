"""Prompt-lookup (n-gram) proposer: drafts the tokens that followed an earlier copy of the sequence's tail.

Outputs often repeat their input (code edits, quoting, summaries, retrieval answers): when the last n
tokens appeared before, the tokens that followed them then are a free guess at what comes next. No
model runs, so a wrong guess costs only the verify positions it occupied. This is the method of
vLLM's and TensorRT-LLM's n-gram speculation.

Rules, for a sequence t of length L and n in [min_n, max_n]:
- an earlier occurrence of the tail t[L-n:] is a window t[i:i+n] equal to it with i + n < L, so at
  least one token follows it (it may overlap the tail: in "a a a" the tail "a a" occurred at i = 0);
- the longest n with an occurrence wins: a longer match is more specific context;
- among that n's occurrences the most recent (largest i) wins: it is the nearest context to what is
  being generated now (the latest copy of a line being rewritten, the latest turn of a chat);
- the proposal is the up to k tokens after it, t[i+n : i+n+k], shorter where the sequence ends.

The search is one pass for every n at once: the positions matching the last token, narrowed by one
comparison per extra token of n (whole-array while candidates are many, gathered once few), so a
32k-token sequence costs tens of microseconds (about 0.1 ms at worst) once it is a numpy array.
A Python list is converted on each call (about 1 ms at 32k): callers should keep arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from forgellm.engine.request import Request
from forgellm.errors import ConfigError
from forgellm.spec_decode.config import SpeculativeConfig

TokenIds = Sequence[int] | np.ndarray
# Candidate positions are listed (and gathered) once they are fewer than 1/16 of the sequence; above that,
# whole-array comparisons are cheaper (measured: 32k equal tokens took 1.1 ms with lists, 0.1 ms with masks).
SPARSE_BELOW_FRACTION = 16


class NgramProposer:
    """Drafts up to k tokens per request by prompt lookup over n-grams of sizes min_n..max_n."""

    def __init__(self, min_n: int, max_n: int, k: int) -> None:
        for name, value in (("min_n", min_n), ("max_n", max_n), ("k", k)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"NgramProposer {name} must be a positive integer, got {value!r}")
        if min_n > max_n:
            raise ConfigError(f"NgramProposer min_n ({min_n}) must be <= max_n ({max_n})")
        self.min_n, self.max_n, self.k = int(min_n), int(max_n), int(k)

    @classmethod
    def from_config(cls, config: SpeculativeConfig) -> NgramProposer:
        """The proposer a validated `SpeculativeConfig(method="ngram")` describes."""
        if config.method != "ngram":
            raise ConfigError(f"NgramProposer needs speculative_config.method ngram, got {config.method!r}")
        return cls(config.prompt_lookup_min, config.prompt_lookup_max, config.num_speculative_tokens)

    def propose(self, token_ids: TokenIds, k: int | None = None) -> list[int]:
        """Up to k (default self.k) drafted tokens for one sequence; [] when its tail occurred nowhere before.

        `token_ids` is the whole sequence, prompt and output; a numpy array avoids a conversion per step.
        k < 1 proposes nothing (e.g. when the request has no room left in its context).
        """
        k = self.k if k is None else k
        tokens = np.asarray(token_ids)
        if tokens.ndim != 1:
            raise ValueError(f"token_ids must be one sequence (1-D), got shape {tokens.shape}")
        length = tokens.shape[0]
        # An occurrence must end before the last token so that something follows it.
        longest = min(self.max_n, length - 1)
        if k < 1 or longest < self.min_n:
            return []
        # Candidates are the end positions j of earlier windows equal to the tail's last n tokens; each larger
        # n keeps those whose token n-1 places back matches too. While candidates are many (a repetitive
        # sequence) a mask over all positions updates fastest; once few, a list of them (ascending) does.
        match = tokens[:-1] == tokens[-1]
        ends: np.ndarray | None = None
        best_n, best_end = 0, -1
        for n in range(1, longest + 1):
            if n > 1 and ends is None:
                match[n - 2] = False  # a window of n ending there would start before the sequence
                match[n - 1 :] &= tokens[: length - n] == tokens[length - n]
            elif n > 1:
                ends = ends[np.searchsorted(ends, n - 1) :]  # windows that would start before 0 are a prefix
                ends = ends[tokens[ends - (n - 1)] == tokens[length - n]]
            if ends is None and np.count_nonzero(match) * SPARSE_BELOW_FRACTION <= length:
                ends = np.flatnonzero(match)
            if ends is None:
                latest = length - 2 - int(np.argmax(match[::-1]))  # still a mask: some j matches
            elif ends.size:
                latest = int(ends[-1])
            else:
                break
            best_n, best_end = n, latest
        if best_n < self.min_n:
            return []
        return tokens[best_end + 1 : best_end + 1 + k].tolist()

    def propose_batch(self, sequences: Sequence[TokenIds], ks: Sequence[int] | None = None) -> list[list[int]]:
        """Drafts for several requests of one step; ks[i] caps request i's draft (default self.k each)."""
        if ks is None:
            ks = [self.k] * len(sequences)
        if len(ks) != len(sequences):
            raise ValueError(f"propose_batch got {len(sequences)} sequences but {len(ks)} draft lengths")
        return [self.propose(tokens, k) for tokens, k in zip(sequences, ks)]

    def propose_for(
        self, requests: Sequence[Request], ks: Sequence[int], hidden_states: object = None
    ) -> list[list[int]]:
        """Drafts for the engine's running requests; ks[i] = 0 proposes nothing for request i."""
        return [self.propose(request.all_token_ids, k) if k > 0 else [] for request, k in zip(requests, ks)]
