"""The verify step's sampling: the target's distribution at every draft position, then rejection sampling.

Each verified request contributes 1 + d rows of logits (its last token and its d drafts). They are
processed exactly as the normal sampler processes one row (temperature, top-k, top-p, min-p), with the
request's settings repeated per position, so `rejection_sample` emits tokens distributed as plain
decoding would. Greedy requests get one-hot rows at the argmax of their logits, so their acceptance is
bit-exact agreement with `logits.argmax`, as in plain greedy decoding. Penalties, logprobs and an unmet
min_tokens change per position; requests with them do not speculate (SpeculativeDecoder.can_speculate).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from forgellm.engine.request import Request
from forgellm.sampling.rejection_sampler import rejection_sample
from forgellm.sampling.sampler import sampling_probs
from forgellm.sampling.sampling_metadata import SamplingMetadata


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
) -> torch.Tensor:
    """[B, k + 1] tokens each request emits (-1 padded), from its 1 + len(drafts[i]) consecutive rows of `logits`."""
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
    rows = logits.index_select(0, torch.tensor(index, device=device))
    draft_ids = torch.tensor([d + [-1] * (width - 1 - len(d)) for d in drafts], dtype=torch.int64, device=device)
    if all(r.sampling_params.is_greedy for r in requests):
        return greedy_verify(rows.view(len(requests), width, vocab_size), draft_ids)
    repeated = [request for request in requests for _ in range(width)]
    meta = SamplingMetadata.from_requests(repeated, [None] * len(repeated), vocab_size, device)
    probs = target_probs(rows, meta).view(len(requests), width, vocab_size)
    greedy = torch.tensor([r.sampling_params.is_greedy for r in requests], dtype=torch.bool, device=device)
    num_drafts = torch.tensor([len(d) for d in drafts], dtype=torch.int64, device=device)
    result = rejection_sample(probs, draft_ids, None, greedy, generators, num_drafts, default_generator)
    return result.token_ids


def greedy_verify(logits: torch.Tensor, draft_ids: torch.Tensor) -> torch.Tensor:
    """[B, k + 1] tokens of all-greedy rows: the target's argmax at each position up to the first draft it
    disagrees with (inclusive); -1 after. The same tokens as rejection sampling on one-hot rows, in a few ops."""
    choices = logits.argmax(dim=-1)  # [B, k + 1]; ties: the lowest id, as plain greedy decoding
    k = draft_ids.shape[1]
    agree = (draft_ids == choices[:, :k]).int().cumprod(dim=1)  # padding (-1) never agrees
    num_accepted = agree.sum(dim=1, keepdim=True)
    positions = torch.arange(k + 1, device=logits.device)
    return torch.where(positions <= num_accepted, choices, -1)
