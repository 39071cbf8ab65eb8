"""Reusable pinned host buffers for a step's inputs.

Pinning fresh host memory for every input tensor of every step cost about 1 ms of host time per
decode step on the H200 machine (pin_memory + is_pinned); copying into buffers pinned once at
start-up costs microseconds. A buffer is reused by the next step only after this step's sampled
ids have been copied back, which orders every earlier host-to-device copy before it; with a step
in flight while the next is prepared, the model runner alternates between two stagings.
"""

from __future__ import annotations

import torch


class PinnedStaging:
    """One pinned buffer per ForwardBatch field, each as large as the largest step needs."""

    def __init__(self, max_tokens: int, max_seqs: int, max_blocks_per_seq: int, pin: bool = True) -> None:
        """`pin=False` keeps plain host buffers (tests on a machine without CUDA)."""

        def pinned(n: int, dtype: torch.dtype) -> torch.Tensor:
            buffer = torch.empty(n, dtype=dtype)
            return buffer.pin_memory() if pin else buffer

        self.buffers = {
            "input_ids": pinned(max_tokens, torch.int64),
            "positions": pinned(max_tokens, torch.int64),
            "slot_mapping": pinned(max_tokens, torch.int64),
            "logits_indices": pinned(max_tokens, torch.int64),
            "query_start_loc": pinned(max_seqs + 1, torch.int32),
            "seq_lens": pinned(max_seqs, torch.int32),
            "block_tables": pinned(max_seqs * max_blocks_per_seq, torch.int32),
            # (destination token index, row of the previous step's sampled ids) of each placeholder
            "placeholders": pinned(2 * max_seqs, torch.int64),
        }
        # The step's sampled ids come back here (device-to-host, non-blocking).
        self.sampled = pinned(max_seqs, torch.int64)

    def put(self, field: str, values: list, dtype: torch.dtype) -> torch.Tensor:
        """`values` (a flat or rectangular list) copied into the field's pinned buffer, as a view."""
        source = torch.tensor(values, dtype=dtype)
        buffer = self.buffers[field]
        if source.numel() > buffer.numel():  # larger than planned: fall back to a one-off pinned copy
            return source.pin_memory()
        view = buffer[: source.numel()].view(source.shape)
        view.copy_(source)
        return view
