"""The sampler's logits processors: each turns [N, V] logits into adjusted logits from the step's SamplingMetadata.

They run in order, before temperature and the top-k / top-p / min-p filters: min_tokens, the repetition,
frequency and presence penalties, logit bias, allowed token ids, bad words. A processor with nothing to
do in a batch (its metadata fields are None) costs nothing. The plain sampler and the verify step of
speculative decoding (one row per draft position) run the same pipeline, so every setting applies to
drafted tokens exactly as to sampled ones. A new control is one function here and its fields in
SamplingMetadata.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from forgellm.sampling.penalties import apply_min_tokens, apply_penalties
from forgellm.sampling.sampling_metadata import SamplingMetadata

LogitsProcessor = Callable[[torch.Tensor, SamplingMetadata], torch.Tensor]


def apply_logit_bias(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """Add each row's `logit_bias` values to its tokens' logits (OpenAI's logit_bias, -100..100)."""
    if meta.logit_bias_rows is None:
        return logits
    return logits.index_put((meta.logit_bias_rows, meta.logit_bias_token_ids), meta.logit_bias_values, accumulate=True)


def apply_allowed_token_ids(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """On rows with `allowed_token_ids`, every other token's logit becomes -inf."""
    if meta.allowed_rows is None:
        return logits
    rows = logits.index_select(0, meta.allowed_rows).masked_fill(~meta.allowed_mask, float("-inf"))
    return logits.index_copy(0, meta.allowed_rows, rows)


def apply_bad_words(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """Ban the last token of each bad word whose other tokens the row's output ends with.

    Entries with a required last token (not -1) wait for a token still on the device (asynchronous
    scheduling): they ban only where `meta.last_token_ids` holds it.
    """
    if meta.bad_words_rows is None:
        return logits
    rows, required = meta.bad_words_rows, meta.bad_words_required
    banned = required < 0
    if meta.last_token_ids is not None:
        banned = banned | (meta.last_token_ids.index_select(0, rows) == required)
    # Adding -inf or 0 (accumulating) leaves a token banned by any of its entries, whatever their order.
    additions = torch.where(banned, float("-inf"), 0.0).to(logits.dtype)
    return logits.index_put((rows, meta.bad_words_token_ids), additions, accumulate=True)


def apply_grammar_bitmask(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """Tokens a row's grammar does not allow next get -inf (bit i of word i // 32 set: token i allowed).

    It runs before the other processors, and logprobs are taken after it: a constrained request reports
    the distribution it samples from, as vLLM does.
    """
    if meta.grammar_bitmask is None:
        return logits
    shifts = torch.arange(32, dtype=torch.int32, device=logits.device)
    allowed = ((meta.grammar_bitmask.unsqueeze(-1) >> shifts) & 1).bool().flatten(1)[:, : logits.shape[-1]]
    return logits.masked_fill(~allowed, float("-inf"))


LOGITS_PROCESSORS: tuple[LogitsProcessor, ...] = (
    apply_min_tokens,
    apply_penalties,
    apply_logit_bias,
    apply_allowed_token_ids,
    apply_bad_words,
)


def apply_logits_processors(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """Run every processor of the pipeline over float32 logits [N, V]."""
    for processor in LOGITS_PROCESSORS:
        logits = processor(logits, meta)
    return logits
