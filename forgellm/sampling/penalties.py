"""Logit adjustments that depend on what a request has seen: penalties and min_tokens masking."""

from __future__ import annotations

import torch

from forgellm.sampling.sampling_metadata import SamplingMetadata


def apply_min_tokens(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """Mask EOS and stop token ids to -inf on rows that have not yet produced min_tokens tokens."""
    if meta.min_tokens_rows is None:
        return logits
    # new_full fills on the device; torch.tensor(-inf, device=...) would be a blocking host copy.
    minus_inf = logits.new_full((1,), float("-inf"))
    return logits.index_put((meta.min_tokens_rows, meta.min_tokens_token_ids), minus_inf)


def apply_penalties(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """Apply the repetition (HF/vLLM), frequency and presence (OpenAI) penalties to [N, V] logits.

    Repetition divides positive logits (multiplies non-positive ones) of every token seen in the
    prompt or the output by the penalty; frequency subtracts penalty * output count; presence
    subtracts the penalty once for every token present in the output.
    """
    counts = meta.output_token_counts
    if counts is None:
        return logits
    if meta.repetition_penalties is not None:
        seen = counts > 0
        if meta.prompt_token_mask is not None:
            seen |= meta.prompt_token_mask
        penalty = meta.repetition_penalties.unsqueeze(1)
        penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
        logits = torch.where(seen, penalized, logits)
    if meta.frequency_penalties is not None:
        logits = logits - meta.frequency_penalties.unsqueeze(1) * counts
    if meta.presence_penalties is not None:
        logits = logits - meta.presence_penalties.unsqueeze(1) * (counts > 0)
    return logits
