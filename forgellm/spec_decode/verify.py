"""The verify step's sampling: the target's distribution at every draft position, then rejection sampling.

Each verified request contributes 1 + d rows of logits (its last token and its d drafts). Row j is
processed exactly as the normal sampler would process the logits of that position had the drafts
before it been emitted one by one: min_tokens counts j more outputs, the penalties count drafts
1..j as outputs, then temperature, top-k, top-p and min-p; so `rejection_sample` emits tokens
distributed as plain decoding would. Greedy requests get one-hot rows at the argmax of their
processed logits, so their acceptance is bit-exact agreement with plain greedy decoding. Logprobs
(of the raw distribution, as the sampler reports them) come for every row; the caller keeps those
of the emitted tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from forgellm.engine.request import Request
from forgellm.sampling.logits_processors import apply_logits_processors
from forgellm.sampling.rejection_sampler import rejection_sample
from forgellm.sampling.sampler import LogprobsTensors, gather_logprobs, sampling_probs
from forgellm.sampling.sampling_metadata import SamplingMetadata, to_device


@dataclass
class VerifyOutput:
    """Tokens each verified request emits, and their logprobs when a request asked for them."""

    token_ids: torch.Tensor  # [B, k + 1] int64, -1 after the last emitted token
    logprobs: LogprobsTensors | None  # one row per (request, position), B * (k + 1) rows, or None


def target_probs(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """[N, V] final sampling distribution of each row: one-hot at the argmax on greedy rows."""
    logits = logits.float()
    greedy_ids = None if meta.all_random else logits.argmax(dim=-1)
    one_hot = None if greedy_ids is None else torch.zeros_like(logits).scatter_(-1, greedy_ids.unsqueeze(-1), 1.0)
    if meta.all_greedy:
        return one_hot
    probs = sampling_probs(logits, meta)
    if one_hot is None:
        return probs
    return torch.where(meta.greedy_mask.unsqueeze(1), one_hot, probs)


def verify_drafts(
    logits: torch.Tensor,
    requests: Sequence[Request],
    drafts: Sequence[list[int]],
    generators: Sequence[torch.Generator | None],
    default_generator: torch.Generator | None,
) -> VerifyOutput:
    """What each request emits, from its 1 + len(drafts[i]) consecutive rows of `logits`."""
    device, vocab_size = logits.device, logits.shape[-1]
    counts = [1 + len(d) for d in drafts]
    width = max(counts)
    # Pad every request to `width` rows by repeating its last one; rejection_sample never reads past a row's drafts.
    index: list[int] = []
    first = 0
    for count in counts:
        index.extend(range(first, first + count))
        index.extend([first + count - 1] * (width - count))
        first += count
    # Host values reach the device through pinned memory: a pageable copy would wait for the forward pass.
    rows = logits.index_select(0, to_device(torch.tensor(index), device)).float()
    draft_ids = to_device(torch.tensor([d + [-1] * (width - 1 - len(d)) for d in drafts], dtype=torch.int64), device)
    repeated = [request for request in requests for _ in range(width)]
    prior = [request.num_output_tokens + j for request in requests for j in range(width)]
    histories = None
    if any(request.sampling_params.bad_words_token_ids for request in requests):  # row j follows drafts 1..j
        histories = [request.output_token_ids + d[:j] for request, d in zip(requests, drafts) for j in range(width)]
    meta = SamplingMetadata.from_requests(repeated, [None] * len(repeated), vocab_size, device, prior, histories)
    _count_drafts_as_outputs(meta, drafts, width)
    raw_logprobs = None if meta.max_num_logprobs is None else rows.log_softmax(dim=-1)
    rows = apply_logits_processors(rows, meta)
    if meta.all_greedy:
        tokens = greedy_verify(rows.view(len(requests), width, vocab_size), draft_ids)
    else:
        probs = target_probs(rows, meta).view(len(requests), width, vocab_size)
        greedy = to_device(torch.tensor([r.sampling_params.is_greedy for r in requests], dtype=torch.bool), device)
        num_drafts = to_device(torch.tensor([len(d) for d in drafts], dtype=torch.int64), device)
        tokens = rejection_sample(probs, draft_ids, None, greedy, generators, num_drafts, default_generator).token_ids
    logprobs = None
    if raw_logprobs is not None:  # padding (-1) reads token 0; the caller keeps the emitted positions only
        logprobs = gather_logprobs(raw_logprobs, tokens.clamp_min(0).view(-1), meta.max_num_logprobs)
    return VerifyOutput(tokens, logprobs)


def _count_drafts_as_outputs(meta: SamplingMetadata, drafts: Sequence[list[int]], width: int) -> None:
    """Row j of a request sees drafts 1..j among its outputs (for the presence/frequency/repetition penalties)."""
    if meta.output_token_counts is None:
        return
    rows, token_ids = [], []
    for i, draft in enumerate(drafts):
        for j in range(1, width):
            for token in draft[: min(j, len(draft))]:
                rows.append(i * width + j)
                token_ids.append(token)
    if rows:
        counts = meta.output_token_counts
        where = (to_device(torch.tensor(rows), counts.device), to_device(torch.tensor(token_ids), counts.device))
        counts.index_put_(where, torch.ones(len(rows), dtype=counts.dtype, device=counts.device), accumulate=True)


def greedy_verify(logits: torch.Tensor, draft_ids: torch.Tensor) -> torch.Tensor:
    """[B, k + 1] tokens of all-greedy rows: the target's argmax at each position up to the first draft it
    disagrees with (inclusive); -1 after. The same tokens as rejection sampling on one-hot rows, in a few ops."""
    choices = logits.argmax(dim=-1)  # [B, k + 1]; ties: the lowest id, as plain greedy decoding
    k = draft_ids.shape[1]
    agree = (draft_ids == choices[:, :k]).int().cumprod(dim=1)  # padding (-1) never agrees
    num_accepted = agree.sum(dim=1, keepdim=True)
    positions = torch.arange(k + 1, device=logits.device)
    return torch.where(positions <= num_accepted, choices, -1)
