"""GrammarState: one sample's position in its grammar (an xgrammar matcher), advanced with its tokens."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from forgellm.structured.grammar_pool import no_wait


def bitmask_width(vocab_size: int) -> int:
    """int32 words per row of a token bitmask (one bit per token)."""
    return (vocab_size + 31) // 32


class GrammarState:
    """Which tokens may come next, and whether the grammar is complete. The matcher sees every token the
    request appends (Request.append_token), so it always matches the request's output."""

    def __init__(self, matcher: Any, vocab_size: int, pool: Any = None) -> None:
        self.matcher = matcher
        self.vocab_size = vocab_size
        self.pool = pool  # the backend's GrammarPool, which works on a batch's grammars together
        self.num_tokens = 0  # output tokens seen (accepted, or after a refused one, ignored)
        self.rejected_token: int | None = None  # a token the grammar did not allow (the request then stops)
        # Kept here so the engine thread can ask while a pool thread fills this matcher's next mask.
        self._terminated = bool(matcher.is_terminated())

    @property
    def is_active(self) -> bool:
        """It still constrains: not ended and no refused token. An ended grammar leaves its bitmask row as it
        is: a request that finished in the step in flight may be computed once more under asynchronous
        scheduling, and that token is discarded."""
        return self.rejected_token is None and not self._terminated

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed next tokens into row `row` of an int32 [N, bitmask_width] CPU tensor (all ones)."""
        if self.is_active:
            self.matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, token_id: int, index: int | None = None) -> None:
        """Advance past `token_id`, the output's token `index` (None: the next); a token already seen there
        (accepted ahead, by accept_ahead) is skipped. A token the grammar does not allow (it was never
        masked in, e.g. EOS forced by max_tokens) is recorded instead."""
        if index is not None and index < self.num_tokens:
            return
        self.num_tokens += 1
        if self.rejected_token is None and not self._terminated:
            if self.matcher.accept_token(token_id):
                self._terminated = bool(self.matcher.is_terminated())
            else:
                self.rejected_token = token_id

    @property
    def is_terminated(self) -> bool:
        """The output is complete: the grammar accepted its end (a stop token) or can go no further."""
        return self._terminated


def fill_bitmasks(rows: list[tuple[int, GrammarState]], bitmask: torch.Tensor) -> None:
    """Fill the bitmask rows of several grammars at once, on their backend's GrammarPool when they share one."""
    fill_bitmasks_async(rows, bitmask)()


def fill_bitmasks_async(rows: list[tuple[int, GrammarState]], bitmask: torch.Tensor) -> Callable[[], None]:
    """`fill_bitmasks` started on the grammars' pool (here and now without one); returns the wait for it."""
    active = [(row, state) for row, state in rows if state.is_active]
    pool = _shared_pool([state for _, state in active])
    if pool is None:
        for row, state in active:
            state.matcher.fill_next_token_bitmask(bitmask, row)
        return no_wait
    return pool.fill_async([row for row, _ in active], [state.matcher for _, state in active], bitmask)


def accept_ahead(tokens: list[tuple[GrammarState, int, int]]) -> None:
    """Accept (grammar, output index, token) triples on the grammars' shared pool, before the requests
    append those tokens (Request.append_token then skips the grammar, which has seen them)."""
    pool = _shared_pool([state for state, _, _ in tokens])
    if pool is not None:
        pool.map(GrammarState.accept, [(state, token, index) for state, index, token in tokens])


def accept_then_fill_async(
    tokens: list[tuple[GrammarState, int, int]], rows: list[tuple[int, GrammarState]], bitmask: torch.Tensor | None
) -> tuple[Callable[[], None], Callable[[], None]]:
    """`accept_ahead(tokens)`, then `fill_bitmasks(rows, bitmask)` for the states' next tokens, in one pass on
    their shared pool: each grammar fills its row right after accepting its token, on the same thread. Returns
    the wait for the accepts (the requests may append their tokens after it) and the wait for the masks
    (`bitmask` may be None when there are no `rows`)."""
    pool = _shared_pool([state for state, _, _ in tokens] + [state for _, state in rows])
    if pool is None:
        for state, index, token in tokens:
            state.accept(token, index)
        return no_wait, fill_bitmasks_async(rows, bitmask)
    return pool.map_then_async(
        GrammarState.accept, [(state, token, index) for state, index, token in tokens],
        lambda state, row: state.fill_bitmask(bitmask, row), [(state, row) for row, state in rows],
    )  # fmt: skip


def _shared_pool(states: list[GrammarState]) -> Any:
    """The GrammarPool every state shares, or None (no states, or more than one pool)."""
    pool = states[0].pool if states else None
    return pool if all(state.pool is pool for state in states) else None
