"""DraftKVCache: the draft model's own paged KV cache, and which tokens' K/V it holds for each request.

The draft model runs ahead of the target: it computes K/V for its own guesses, some of which the
target then rejects. Its blocks are separate from the target's (a different model, other shapes), so
rollback is local: a sequence's K/V stays valid up to the first position where the tokens it was fed
differ from the request's tokens; everything after is recomputed or overwritten by the next proposal.

Tokens only ever get appended to a request, so what was fed as real tokens (`num_committed`) stays
valid; only the drafts fed after them need comparing, a few tokens per step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from forgellm.scheduling.block_pool import BlockPool


@dataclass
class DraftSequence:
    """One request's part of the draft cache."""

    block_ids: list[int] = field(default_factory=list)
    num_committed: int = 0  # leading tokens whose K/V is in the cache and which are the request's own tokens
    drafts_fed: list[int] = field(default_factory=list)  # guesses whose K/V follows them (positions num_committed..)


class DraftKVCache:
    """Blocks of the draft model's KV cache per request; a request without enough blocks just does not draft."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.pool = BlockPool(num_blocks)
        self.sequences: dict[str, DraftSequence] = {}

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    def num_valid_tokens(self, request_id: str, token_ids: Sequence[int]) -> int:
        """How many leading `token_ids` (the request's tokens) have valid K/V in the draft cache."""
        sequence = self.sequences.get(request_id)
        if sequence is None:
            return 0
        valid = min(sequence.num_committed, len(token_ids))
        for guess in sequence.drafts_fed:
            if valid >= len(token_ids) or token_ids[valid] != guess:
                break
            valid += 1
        return valid

    def reserve(self, request_id: str, num_positions: int) -> list[int] | None:
        """The request's block table, grown to hold `num_positions` tokens; None (nothing taken) if blocks are short."""
        sequence = self.sequences.setdefault(request_id, DraftSequence())
        missing = -(-num_positions // self.block_size) - len(sequence.block_ids)
        if missing > 0:
            if missing > self.pool.num_free_blocks:
                return None
            sequence.block_ids.extend(self.pool.allocate(missing))
        return sequence.block_ids

    def record(self, request_id: str, num_committed: int, drafts_fed: list[int]) -> None:
        """After a proposal: K/V now holds the request's first `num_committed` tokens, then `drafts_fed`."""
        sequence = self.sequences[request_id]
        sequence.num_committed, sequence.drafts_fed = num_committed, list(drafts_fed)

    def retain(self, request_ids: Iterable[str]) -> None:
        """Free every sequence but those of `request_ids` (the running requests): finished, aborted and
        preempted requests give their blocks back; a resumed one recomputes its draft K/V."""
        keep = set(request_ids)
        for request_id in [r for r in self.sequences if r not in keep]:
            self.pool.release(self.sequences.pop(request_id).block_ids)
