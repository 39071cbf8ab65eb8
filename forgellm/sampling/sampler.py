"""Sampler: turns one step's logits into token ids (and logprobs), on the logits' device."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from forgellm.sampling.logits_processors import apply_grammar_bitmask, apply_logits_processors
from forgellm.sampling.sampling_metadata import SamplingMetadata


@dataclass
class LogprobsTensors:
    """Logprobs of N positions: column 0 is the chosen token, columns 1..k the top-k by logprob.

    Rows that asked for fewer than k alternatives use the first columns; the caller slices.
    """

    token_ids: torch.Tensor  # [N, 1 + k] int64
    logprobs: torch.Tensor  # [N, 1 + k] float32
    ranks: torch.Tensor  # [N] int64, rank of the chosen token (1 = most likely)


@dataclass
class SamplerOutput:
    """What one step produced: a token per row and, if any row asked, their raw logprobs."""

    sampled_token_ids: torch.Tensor  # [N] int64
    logprobs: LogprobsTensors | None


class Sampler:
    """The logits processors (min_tokens, penalties, logit controls), temperature, top-k/top-p/min-p and
    seeded sampling for a batch of logits.

    Everything stays on the logits' device; the sampler never synchronises with the host.
    """

    def __call__(
        self,
        logits: torch.Tensor,
        metadata: SamplingMetadata,
        default_generator: torch.Generator | None = None,
    ) -> SamplerOutput:
        """Sample one token per row of `logits` [N, V]; unseeded rows draw from `default_generator`."""
        logits = apply_grammar_bitmask(logits.float(), metadata)
        # Logprobs describe the model's own distribution, so they come before any adjustment.
        raw_logprobs = None if metadata.max_num_logprobs is None else logits.log_softmax(dim=-1)
        logits = apply_logits_processors(logits, metadata)
        sampled = _sample(logits, metadata, default_generator)
        logprobs = None
        if raw_logprobs is not None:
            logprobs = gather_logprobs(raw_logprobs, sampled, metadata.max_num_logprobs)
        return SamplerOutput(sampled_token_ids=sampled, logprobs=logprobs)


def _sample(logits: torch.Tensor, meta: SamplingMetadata, default_generator: torch.Generator | None) -> torch.Tensor:
    """Greedy rows take the argmax; the others sample from the tempered, filtered distribution."""
    greedy_ids = None if meta.all_random else logits.argmax(dim=-1)
    if meta.all_greedy:
        return greedy_ids
    random_ids = _exponential_race(sampling_probs(logits, meta), meta, default_generator)
    if greedy_ids is None:
        return random_ids
    return torch.where(meta.greedy_mask, greedy_ids, random_ids)


def sampling_probs(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """The distribution random rows draw from: tempered, filtered by top-k/top-p/min-p, softmaxed."""
    if meta.temperature is not None:
        logits = logits / meta.temperature.unsqueeze(1)
    return apply_top_k_top_p_min_p(logits, meta).softmax(dim=-1)


def _exponential_race(
    probs: torch.Tensor, meta: SamplingMetadata, default_generator: torch.Generator | None
) -> torch.Tensor:
    """Draw one token per row: argmax(p / E) with E ~ Exp(1) samples exactly from p."""
    noise = torch.empty_like(probs)
    if len(meta.generators) < meta.num_rows:
        noise.exponential_(generator=default_generator)
    # A seeded row draws its own V values from its own generator, so its result does not depend
    # on its position in the batch or on its companions.
    for row, generator in meta.generators.items():
        noise[row].exponential_(generator=generator)
    # An exact 0 draw would turn a filtered token's 0/0 into NaN, which argmax would pick.
    noise.clamp_min_(torch.finfo(noise.dtype).tiny)
    return probs.div_(noise).argmax(dim=-1)


def apply_top_k_top_p_min_p(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """Return `logits` with every token outside the row's top-k, top-p nucleus or min-p set at -inf.

    Greedy rows are left unfiltered, except that with `meta.top_k_bound` they keep only that many
    best tokens (harmless: they take the argmax before filtering).
    """
    if meta.top_k is not None or meta.top_p is not None:
        logits = _apply_top_k_top_p(logits, meta.top_k, meta.top_p, meta.top_k_bound)
    if meta.min_p is not None:
        logits = _apply_min_p(logits, meta.min_p)
    return logits


def _apply_top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None, bound: int | None
) -> torch.Tensor:
    """Filter in sorted order, where both top-k and top-p are prefixes, then scatter back."""
    if bound is not None:
        # Every random row keeps at most `bound` tokens, so only those need sorting.
        sorted_logits, order = logits.topk(bound, dim=-1)
        filtered = torch.full_like(logits, float("-inf"))
    else:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        filtered = torch.empty_like(logits)
    if top_k is not None:
        positions = torch.arange(sorted_logits.shape[-1], device=logits.device)
        # By position rather than by value, so ties at the k-th logit still keep exactly k tokens.
        sorted_logits = sorted_logits.masked_fill(positions >= top_k.unsqueeze(1), float("-inf"))
    if top_p is not None:
        probs = sorted_logits.softmax(dim=-1)
        cumulative = probs.cumsum(dim=-1)
        # A token is kept while the tokens before it have not yet reached top_p, so the nucleus is
        # the smallest prefix reaching top_p and always holds the best token.
        mass_before = torch.cat([torch.zeros_like(cumulative[:, :1]), cumulative[:, :-1]], dim=-1)
        drop = (mass_before >= top_p.unsqueeze(1)) & (top_p < 1.0).unsqueeze(1)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return filtered.scatter_(-1, order, sorted_logits)


def _apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the row's largest probability."""
    probs = logits.softmax(dim=-1)
    threshold = probs.amax(dim=-1, keepdim=True) * min_p.unsqueeze(1)
    return logits.masked_fill(probs < threshold, float("-inf"))


def gather_logprobs(logprobs: torch.Tensor, token_ids: torch.Tensor, k: int) -> LogprobsTensors:
    """Pack the logprob and rank of `token_ids` [N] and the top-k of `logprobs` [N, V]."""
    token_ids = token_ids.long().unsqueeze(1)
    chosen = logprobs.gather(-1, token_ids)
    ranks = (logprobs > chosen).sum(dim=-1) + 1
    k = min(k, logprobs.shape[-1])
    if k > 0:
        top_logprobs, top_ids = logprobs.topk(k, dim=-1)
        token_ids = torch.cat([token_ids, top_ids], dim=1)
        chosen = torch.cat([chosen, top_logprobs], dim=1)
    return LogprobsTensors(token_ids=token_ids, logprobs=chosen, ranks=ranks)


def compute_prompt_logprobs(logits: torch.Tensor, target_token_ids: torch.Tensor, k: int) -> LogprobsTensors:
    """Logprobs of the actual next prompt tokens `target_token_ids` [P] under `logits` [P, V], plus top-k."""
    return gather_logprobs(logits.float().log_softmax(dim=-1), target_token_ids, k)
