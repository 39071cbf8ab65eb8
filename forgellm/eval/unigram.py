"""The unigram baseline: how well token frequencies alone predict a text.

The frequencies are those of the scored tokens themselves, so this is the lowest perplexity any
context-free model can reach on the text (a strict baseline: a model must use context to beat it).
"""

from __future__ import annotations

import math
from collections import Counter


def unigram_perplexity(token_ids: list[int]) -> float:
    """exp of the entropy of the tokens' own frequency distribution."""
    if not token_ids:
        raise ValueError("no tokens to measure")
    n = len(token_ids)
    entropy = -sum(c / n * math.log(c / n) for c in Counter(token_ids).values())
    return math.exp(entropy)
