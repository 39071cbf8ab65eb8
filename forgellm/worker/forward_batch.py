"""ForwardBatch: the only thing the model sees about a step (see DESIGN.md, Contracts)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from forgellm.worker.pinned_staging import PinnedStaging


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
    # Vision-language models: encoder outputs [M, hidden] that replace the embeddings of the image and
    # video placeholder tokens at mm_token_indices [M] (int64, into the T tokens); None without any.
    mm_embeds: torch.Tensor | None = None
    mm_token_indices: torch.Tensor | None = None

    def to(self, device: torch.device) -> ForwardBatch:
        """The same batch with its tensors on `device` (non-blocking from pinned memory)."""
        moved = {name: getattr(self, name).to(device, non_blocking=True) for name in _TENSOR_FIELDS}
        for name in _OPTIONAL_TENSOR_FIELDS:
            if getattr(self, name) is not None:
                moved[name] = getattr(self, name).to(device, non_blocking=True)
        return replace(self, **moved)

    def __getstate__(self) -> dict:
        # A host batch is pickled every step to reach the other ranks (TensorParallelExecutor.broadcast). torch
        # pickles a tensor through its whole storage (all of a staging buffer that a field views) at tens of
        # microseconds apiece; numpy pickles just an array's elements, ~30x faster (benchmarks/step_broadcast.py).
        return {name: _as_numpy(value) for name, value in vars(self).items()}

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, torch.from_numpy(value) if isinstance(value, np.ndarray) else value)

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_requests(self) -> int:
        return self.seq_lens.shape[0]

    @property
    def token_seq_lens(self) -> torch.Tensor:
        """[T]: the KV length of each token's sequence (dynamic-NTK rotary needs it per token).

        Computed on every access, never cached: a cached tensor made during a CUDA graph's warm-up
        would be captured as a constant (and freed), leaving replays to read stale memory.
        """
        query_lens = self.query_start_loc[1:] - self.query_start_loc[:-1]
        return torch.repeat_interleave(self.seq_lens, query_lens.to(torch.int64), output_size=self.num_tokens)


def _as_numpy(value: object) -> object:
    """A host tensor as a numpy array sharing its memory; anything else (a GPU tensor, bfloat16) as it is."""
    if isinstance(value, torch.Tensor) and value.device.type == "cpu" and value.dtype != torch.bfloat16:
        return value.numpy()
    return value


_TENSOR_FIELDS = (
    "input_ids",
    "positions",
    "query_start_loc",
    "seq_lens",
    "block_tables",
    "slot_mapping",
    "logits_indices",
)
_OPTIONAL_TENSOR_FIELDS = ("mm_embeds", "mm_token_indices")


@dataclass
class SequenceChunk:
    """One request's part of a step, as the batch builder needs it."""

    token_ids: list[int]  # the new tokens computed this step
    start: int  # position of the first of them
    block_ids: list[int]  # the request's block table
    logits_positions: list[int]  # offsets within token_ids whose logits are needed
    # Rotary positions when they are not the token indices (M-RoPE): an offset added to the indices, or
    # the [3, n] positions of tokens whose three streams differ (an image's).
    position_offset: int = 0
    mrope_positions: torch.Tensor | None = None


def build_forward_batch(chunks: list[SequenceChunk], block_size: int, device: torch.device) -> ForwardBatch:
    """Flatten per-request chunks into a ForwardBatch on `device`."""
    return build_host_batch(chunks, block_size, pin=device.type == "cuda").to(device)


def build_host_batch(
    chunks: list[SequenceChunk], block_size: int, pin: bool = False, staging: PinnedStaging | None = None
) -> ForwardBatch:
    """The ForwardBatch in CPU tensors: in `staging`'s pinned buffers when given, else pinned afresh
    if `pin` (copies from pinned memory to the GPU do not block the host)."""
    input_ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    logits_indices: list[int] = []
    query_start_loc = [0]
    seq_lens: list[int] = []
    num_prefills = 0
    max_query_len = 0
    has_mrope = False
    for chunk in chunks:
        n = len(chunk.token_ids)
        offset = query_start_loc[-1]
        input_ids.extend(chunk.token_ids)
        pos = range(chunk.start, chunk.start + n)
        positions.extend(range(chunk.start + chunk.position_offset, chunk.start + chunk.position_offset + n))
        blocks = chunk.block_ids
        slots.extend(blocks[p // block_size] * block_size + p % block_size for p in pos)
        logits_indices.extend(offset + i for i in chunk.logits_positions)
        query_start_loc.append(offset + n)
        seq_lens.append(chunk.start + n)
        num_prefills += n > 1
        max_query_len = max(max_query_len, n)
        has_mrope = has_mrope or chunk.mrope_positions is not None
    width = max((len(c.block_ids) for c in chunks), default=1) or 1
    table = [c.block_ids + [0] * (width - len(c.block_ids)) for c in chunks]

    def host(field: str, values: list, dtype: torch.dtype) -> torch.Tensor:
        if staging is not None:
            return staging.put(field, values, dtype)
        t = torch.tensor(values, dtype=dtype)
        return t.pin_memory() if pin else t

    if has_mrope:
        rows, first = [], 0
        for c in chunks:  # [3, T]: images' own rows, the others' positions on all three streams
            n = len(c.token_ids)
            rows.append(
                c.mrope_positions
                if c.mrope_positions is not None
                else torch.tensor(positions[first : first + n]).expand(3, -1)
            )
            first += n
        rotary = torch.cat(rows, dim=1).contiguous()
        rotary = rotary.pin_memory() if pin or staging is not None else rotary
    else:
        rotary = host("positions", positions, torch.int64)
    return ForwardBatch(
        input_ids=host("input_ids", input_ids, torch.int64),
        positions=rotary,
        query_start_loc=host("query_start_loc", query_start_loc, torch.int32),
        seq_lens=host("seq_lens", seq_lens, torch.int32),
        max_query_len=max_query_len,
        max_seq_len=max(seq_lens, default=0),
        block_tables=host("block_tables", table, torch.int32),
        slot_mapping=host("slot_mapping", slots, torch.int64),
        logits_indices=host("logits_indices", logits_indices, torch.int64),
        num_prefills=num_prefills,
        num_decodes=len(chunks) - num_prefills,
    )
