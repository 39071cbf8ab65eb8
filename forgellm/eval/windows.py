"""Cutting a long token sequence into windows that fit the model's context for scoring.

Window k starts at token k * stride and holds up to `window` tokens. Each window scores (predicts)
only the tokens no earlier window scored, from its second token on: the first token of a window is
context only, since nothing before it in the window predicts it. With stride == window (the
default) the windows do not overlap and every window's first token goes unscored; a smaller stride
gives later windows `window - stride` tokens of extra context, scores every token but the text's
first, and costs window / stride times the compute.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScoringWindow:
    """Token ids fed to the model, and which of them (by index in the window) are scored."""

    token_ids: list[int]
    first_scored: int

    @property
    def scored_ids(self) -> list[int]:
        """The ids this window scores: token_ids[first_scored:]."""
        return self.token_ids[self.first_scored :]


def make_windows(token_ids: list[int], window: int, stride: int | None = None) -> list[ScoringWindow]:
    """Windows covering `token_ids` so that each token after the first is scored at most once."""
    stride = window if stride is None else stride
    if window < 2:
        raise ValueError(f"window must be >= 2 tokens, got {window}")
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be in [1, window={window}], got {stride}")
    windows: list[ScoringWindow] = []
    scored_until = 1  # token 0 of the text never has context
    for start in range(0, max(1, len(token_ids) - 1), stride):
        ids = token_ids[start : start + window]
        first = max(1, scored_until - start)
        if first < len(ids):
            windows.append(ScoringWindow(ids, first))
            scored_until = start + len(ids)
        if start + window >= len(token_ids):
            break
    return windows
