"""Perplexity of a model on text, measured through forgellm's engine, beside the unigram baseline."""

from __future__ import annotations

import math
from dataclasses import dataclass

from forgellm.eval.scoring import TokenScores
from forgellm.eval.unigram import unigram_perplexity


@dataclass(frozen=True)
class PerplexityReport:
    """Perplexity over the scored tokens, and the unigram baseline on the same tokens."""

    num_tokens: int
    mean_nll: float
    perplexity: float
    unigram_perplexity: float
    top1_accuracy: float

    def as_dict(self) -> dict[str, float | int]:
        """The numbers, rounded for printing or JSON."""
        return {
            "tokens": self.num_tokens,
            "mean_nll": round(self.mean_nll, 5),
            "perplexity": round(self.perplexity, 4),
            "unigram_perplexity": round(self.unigram_perplexity, 4),
            "top1_accuracy": round(self.top1_accuracy, 5),
        }


def perplexity_report(scores: TokenScores) -> PerplexityReport:
    """exp(mean negative log-likelihood) of the scored tokens, plus the baseline and top-1 accuracy."""
    n = len(scores.token_ids)
    if n == 0:
        raise ValueError("no tokens were scored: the text needs at least two tokens")
    mean_nll = -math.fsum(scores.logprobs) / n
    hits = sum(a == b for a, b in zip(scores.token_ids, scores.top1_ids))
    return PerplexityReport(n, mean_nll, math.exp(mean_nll), unigram_perplexity(scores.token_ids), hits / n)
