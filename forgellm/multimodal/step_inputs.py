"""What one engine step of a vision-language model needs beyond tokens: the rows of image and video
embeddings its placeholder tokens take, and M-RoPE positions for the chunks of requests with media."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from forgellm.multimodal.encoder_cache import EncoderCache
from forgellm.multimodal.inputs import MultimodalPrompt
from forgellm.scheduling.scheduler_output import SchedulerOutput
from forgellm.worker.forward_batch import ForwardBatch, SequenceChunk


def set_rope_positions(chunk: SequenceChunk, media: MultimodalPrompt) -> None:
    """M-RoPE positions of a chunk of a request with media (others keep their token indices)."""
    chunk.position_offset, chunk.mrope_positions = media.rope_positions(chunk.start, len(chunk.token_ids))


def with_media_embeddings(
    host: ForwardBatch,
    scheduler_output: SchedulerOutput,
    cache: EncoderCache,
    encode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
) -> ForwardBatch:
    """The batch with the embedding rows its placeholder tokens take (ForwardBatch.mm_embeds / indices); media
    not seen before are encoded, all in one call of `encode` per step, and cached."""
    wanted, first = [], 0
    for s in scheduler_output.scheduled:
        count = len(s.spec_token_ids) + 1 if s.spec_token_ids else s.num_new_tokens
        if s.request.multimodal is not None:
            for item, row_start, row_end in s.request.multimodal.overlaps(s.start, count):
                wanted.append((s.request.request_id, item, row_start, row_end, first + item.offset - s.start))
        first += count
    if not wanted:
        return host
    cached = cache.embeddings([(request_id, item) for request_id, item, *_ in wanted], encode, device)
    rows = [cached[item.content_hash][a:b] for _, item, a, b, _ in wanted]
    indices = [index for *_, a, b, base in wanted for index in range(base + a, base + b)]
    return replace(host, mm_embeds=torch.cat(rows), mm_token_indices=torch.tensor(indices, dtype=torch.int64))
