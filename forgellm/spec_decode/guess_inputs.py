"""Host-side inputs of a proposer's k forwards per step, staged in buffers pinned once (GPU only).

Each forward of a step has its own buffers: the forwards are queued back to back, so one cannot refill
another's buffer before the device has copied it. A step ends by copying its guesses to the host, which
orders every earlier copy before it, so the next step may reuse the buffers.
"""

from __future__ import annotations

import torch

from forgellm.worker.forward_batch import ForwardBatch, SequenceChunk, build_host_batch
from forgellm.worker.pinned_staging import PinnedStaging


class GuessInputs:
    """Builds the host ForwardBatch of forward `index` of a step (0: the catch-up, then one per guess)."""

    def __init__(self, block_size: int, device: torch.device) -> None:
        self.block_size = block_size
        self.pin = device.type == "cuda"
        self.stagings: list[PinnedStaging] = []
        self.step_counts = torch.empty(0, dtype=torch.int32)

    def prepare(self, max_num_batched_tokens: int, max_num_seqs: int, max_blocks_per_seq: int, k: int) -> None:
        """Pin buffers for the k forwards of a step: the catch-up may hold a step's tokens, a guess one per request."""
        if self.pin:
            sizes = [max_num_batched_tokens] + [max_num_seqs] * (k - 1)
            self.stagings = [PinnedStaging(size, max_num_seqs, max_blocks_per_seq) for size in sizes]
            self.step_counts = torch.empty(max_num_seqs, dtype=torch.int32).pin_memory()

    def batch(self, chunks: list[SequenceChunk], index: int) -> ForwardBatch:
        """The host batch of forward `index`; larger than planned (or unprepared): pinned afresh."""
        staging = self.stagings[index] if index < len(self.stagings) else None
        return build_host_batch(chunks, self.block_size, pin=self.pin, staging=staging)

    def steps(self, counts: list[int]) -> torch.Tensor:
        """Per request, the forwards of a guess loop (int32, in the pinned buffer when prepared and large enough)."""
        source = torch.tensor(counts, dtype=torch.int32)
        if len(counts) > self.step_counts.numel():
            return source.pin_memory() if self.pin else source
        view = self.step_counts[: len(counts)]
        view.copy_(source)
        return view
