"""GrammarState: one sample's position in its grammar (an xgrammar matcher), advanced with its tokens."""

from __future__ import annotations

from typing import Any

import torch


def bitmask_width(vocab_size: int) -> int:
    """int32 words per row of a token bitmask (one bit per token)."""
    return (vocab_size + 31) // 32


class GrammarState:
    """Which tokens may come next, and whether the grammar is complete. The matcher sees every token the
    request appends (Request.append_token), so it always matches the request's output."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self.matcher = matcher
        self.vocab_size = vocab_size
        self.rejected_token: int | None = None  # a token the grammar did not allow (the request then stops)

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed next tokens into row `row` of an int32 [N, bitmask_width] CPU tensor (all ones)."""
        # An ended grammar leaves the row as it is: a request that finished in the step in flight may still be
        # computed once more under asynchronous scheduling, and that token is discarded.
        if not self.is_terminated and self.rejected_token is None:
            self.matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, token_id: int) -> None:
        """Advance past `token_id`; a token the grammar does not allow (it was never masked in, e.g. EOS
        forced by max_tokens) is recorded instead."""
        if self.rejected_token is None and not self.matcher.is_terminated() and not self.matcher.accept_token(token_id):
            self.rejected_token = token_id

    @property
    def is_terminated(self) -> bool:
        """The output is complete: the grammar accepted its end (a stop token) or can go no further."""
        return self.matcher.is_terminated()
