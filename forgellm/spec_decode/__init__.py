"""Speculative decoding (issue 13): a cheap proposer drafts k tokens, one target forward checks them all.

Proposers: `ngram.NgramProposer` (prompt lookup), `draft_model.DraftModelProposer` (a smaller model of the
same vocabulary, its own paged KV cache) and `eagle3.Eagle3Proposer` (an EAGLE-3 head over the target's
features, its K/V in the target's blocks). `decoder.SpeculativeDecoder` is what the engine core calls
between steps (proposals, acceptance counters); `verify.verify_drafts` is the model runner's verify step
(per-position penalties, rejection sampling, logprobs). `forced_acceptance` serves benchmarks of random
weights. Speculation runs in the synchronous engine only.
"""

from forgellm.spec_decode.config import SPECULATIVE_METHODS, SpeculativeConfig
from forgellm.spec_decode.ngram import NgramProposer

__all__ = ["SPECULATIVE_METHODS", "NgramProposer", "SpeculativeConfig"]
