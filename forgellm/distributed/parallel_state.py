"""ParallelContext: which tensor-parallel rank this process is, passed to layers explicitly."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ParallelContext:
    """Tensor-parallel rank and size. tp_size 1 is the ordinary single-device case."""

    tp_rank: int = 0
    tp_size: int = 1

    def kv_heads(self, num_kv_heads: int) -> tuple[int, int]:
        """(KV heads on this rank, index of its first global KV head): a 1/tp_size share, or, with fewer KV
        heads than ranks, one head replicated on tp_size / num_kv_heads consecutive ranks."""
        if num_kv_heads >= self.tp_size:
            local = num_kv_heads // self.tp_size
            return local, self.tp_rank * local
        return 1, self.tp_rank * num_kv_heads // self.tp_size

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum x over the tensor-parallel group (a no-op on one device)."""
        if self.tp_size == 1:
            return x
        torch.distributed.all_reduce(x)
        return x

    def all_gather_last_dim(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's x along the last dimension (a no-op on one device)."""
        if self.tp_size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.tp_size)]
        torch.distributed.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=-1)


# The ordinary case, and the default of every parallel layer: one device, no communication.
SINGLE_DEVICE = ParallelContext()
