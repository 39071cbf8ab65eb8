"""Speculative decoding (issue 13): a cheap proposer drafts k tokens, one target forward checks them all.

The options (`SpeculativeConfig`) and the n-gram proposer need no model or engine. `decoder.SpeculativeDecoder`
is what the engine core calls between steps (proposals, acceptance counters) and `verify.verify_drafts` the
model runner's verify step. So far: n-gram drafts in the synchronous engine; draft-model and EAGLE-3
proposers, asynchronous scheduling and CUDA graphs with speculation are still to come.
"""

from forgellm.spec_decode.config import SPECULATIVE_METHODS, SpeculativeConfig
from forgellm.spec_decode.ngram import NgramProposer

__all__ = ["SPECULATIVE_METHODS", "NgramProposer", "SpeculativeConfig"]
