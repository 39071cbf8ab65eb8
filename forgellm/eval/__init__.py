"""Accuracy measurements through forgellm's own engine: perplexity and draft/target agreement."""

from forgellm.eval.agreement import greedy_agreement
from forgellm.eval.perplexity import PerplexityReport, perplexity_report
from forgellm.eval.scoring import TokenScores, score_texts, score_windows
from forgellm.eval.texts import read_texts
from forgellm.eval.unigram import unigram_perplexity
from forgellm.eval.windows import ScoringWindow, make_windows

__all__ = [
    "PerplexityReport",
    "ScoringWindow",
    "TokenScores",
    "greedy_agreement",
    "make_windows",
    "perplexity_report",
    "read_texts",
    "score_texts",
    "score_windows",
    "unigram_perplexity",
]
