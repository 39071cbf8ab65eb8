"""Greedy agreement of a draft model with a target model: how often their top-1 tokens match.

On the same text and the same windows, position by position; for draft-model speculative decoding
with greedy verification this is the chance that one drafted token is accepted.
"""

from __future__ import annotations

from forgellm.eval.scoring import TokenScores


def greedy_agreement(target: TokenScores, draft: TokenScores) -> float:
    """The fraction of scored positions where the two models' most likely tokens are equal."""
    if target.token_ids != draft.token_ids:
        raise ValueError("the two models scored different tokens: do they share a tokenizer?")
    if not target.token_ids:
        raise ValueError("no tokens were scored")
    same = sum(a == b for a, b in zip(target.top1_ids, draft.top1_ids))
    return same / len(target.top1_ids)
