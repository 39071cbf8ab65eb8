"""Speculative decoding (issue 13): a cheap proposer drafts k tokens, one target forward checks them all.

This package starts engine-independent: the options (`SpeculativeConfig`) and the n-gram proposer, which
need no model. Draft-model and EAGLE-3 proposers, verification and engine wiring build on them.
"""

from forgellm.spec_decode.config import SPECULATIVE_METHODS, SpeculativeConfig
from forgellm.spec_decode.ngram import NgramProposer

__all__ = ["SPECULATIVE_METHODS", "NgramProposer", "SpeculativeConfig"]
