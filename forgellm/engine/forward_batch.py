"""ForwardBatch: the only thing the model sees about a step (see DESIGN.md, Contracts)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass
class ForwardBatch:
    """All requests' new tokens flattened into one dimension of T tokens.

    The queries of request i are tokens query_start_loc[i]:query_start_loc[i+1]; they are the last
    positions of its seq_lens[i] cached tokens (K/V written this step included).
    """

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    query_start_loc: torch.Tensor  # [B+1] int32
    seq_lens: torch.Tensor  # [B] int32, KV length after this step
    max_query_len: int
    max_seq_len: int
    block_tables: torch.Tensor  # [B, max_blocks] int32 (unused entries are 0)
    slot_mapping: torch.Tensor  # [T] int64, -1 = padding (write nothing)
    logits_indices: torch.Tensor  # [N] int64, which of the T positions produce logits
    num_prefills: int = 0  # requests computing more than one token this step
    num_decodes: int = 0  # requests computing exactly one token

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_requests(self) -> int:
        return self.seq_lens.shape[0]

    @cached_property
    def token_seq_lens(self) -> torch.Tensor:
        """[T]: the KV length of each token's sequence (dynamic-NTK rotary needs it per token)."""
        query_lens = self.query_start_loc[1:] - self.query_start_loc[:-1]
        return torch.repeat_interleave(self.seq_lens, query_lens.to(torch.int64), output_size=self.num_tokens)


@dataclass
class SequenceChunk:
    """One request's part of a step, as the batch builder needs it."""

    token_ids: list[int]  # the new tokens computed this step
    start: int  # position of the first of them
    block_ids: list[int]  # the request's block table
    logits_positions: list[int]  # offsets within token_ids whose logits are needed


def build_forward_batch(chunks: list[SequenceChunk], block_size: int, device: torch.device) -> ForwardBatch:
    """Flatten per-request chunks into a ForwardBatch on `device` (one host-to-device copy per field)."""
    input_ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    logits_indices: list[int] = []
    query_start_loc = [0]
    seq_lens: list[int] = []
    num_prefills = 0
    for chunk in chunks:
        n = len(chunk.token_ids)
        offset = query_start_loc[-1]
        input_ids.extend(chunk.token_ids)
        pos = range(chunk.start, chunk.start + n)
        positions.extend(pos)
        blocks = chunk.block_ids
        slots.extend(blocks[p // block_size] * block_size + p % block_size for p in pos)
        logits_indices.extend(offset + i for i in chunk.logits_positions)
        query_start_loc.append(offset + n)
        seq_lens.append(chunk.start + n)
        num_prefills += n > 1
    max_blocks = max((len(c.block_ids) for c in chunks), default=0)
    width = max(max_blocks, 1)
    table = torch.tensor([c.block_ids + [0] * (width - len(c.block_ids)) for c in chunks], dtype=torch.int32)

    def as_tensor(values: list[int], dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)

    query_lens = [b - a for a, b in zip(query_start_loc, query_start_loc[1:])]
    return ForwardBatch(
        input_ids=as_tensor(input_ids, torch.int64),
        positions=as_tensor(positions, torch.int64),
        query_start_loc=as_tensor(query_start_loc, torch.int32),
        seq_lens=as_tensor(seq_lens, torch.int32),
        max_query_len=max(query_lens, default=0),
        max_seq_len=max(seq_lens, default=0),
        block_tables=table.to(device, non_blocking=True),
        slot_mapping=as_tensor(slots, torch.int64),
        logits_indices=as_tensor(logits_indices, torch.int64),
        num_prefills=num_prefills,
        num_decodes=len(chunks) - num_prefills,
    )
