"""ParallelContext: which tensor- and pipeline-parallel rank this process is, passed to layers explicitly.

Global ranks are laid out stage by stage: rank = pp_rank * tp_size + tp_rank, so global rank 0 (the engine)
is the first stage's first tensor-parallel rank. Tensor-parallel collectives run within a stage's group;
pipeline stages pass activations between the ranks of equal tp_rank in consecutive stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class ParallelContext:
    """Tensor-parallel rank and size, pipeline stage and stage count. All 1s: the single-device case."""

    tp_rank: int = 0
    tp_size: int = 1
    pp_rank: int = 0
    pp_size: int = 1
    tp_group: Any = None  # this stage's tensor-parallel process group (None: the whole world, when pp_size == 1)
    # Counts the collectives this rank enters (distributed.heartbeat.Heartbeats), so a rank stuck between two can
    # be named; None without a heartbeat file.
    progress: Any = field(default=None, compare=False)

    @property
    def rank(self) -> int:
        """The global rank."""
        return self.pp_rank * self.tp_size + self.tp_rank

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    def stage_layers(self, num_layers: int) -> range:
        """The decoder layers this stage runs: a consecutive share; when they do not split evenly the later
        stages take one more (the first stage's rank also schedules and samples)."""
        return range(self.pp_rank * num_layers // self.pp_size, (self.pp_rank + 1) * num_layers // self.pp_size)

    def largest_stage(self, num_layers: int) -> int:
        """Decoder layers of the pipeline's largest stage (every stage holds as many KV blocks as it)."""
        return -(-num_layers // self.pp_size)

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
        if self.progress is not None:
            self.progress.enter_collective()
        torch.distributed.all_reduce(x, group=self.tp_group)
        return x

    def all_gather_last_dim(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's x along the last dimension (a no-op on one device)."""
        if self.tp_size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.tp_size)]
        if self.progress is not None:
            self.progress.enter_collective()
        torch.distributed.all_gather(parts, x.contiguous(), group=self.tp_group)
        return torch.cat(parts, dim=-1)


def join_groups(rank: int, tp_size: int, pp_size: int, progress: Any = None) -> ParallelContext:
    """This rank's context once the process group spans tp_size * pp_size ranks. Every rank must call it
    (creating a group is collective): with several stages, one tensor-parallel group per stage. `progress`: this
    rank's Heartbeats, if any."""
    pp_rank, tp_rank = divmod(rank, tp_size)
    group = None
    if pp_size > 1 and tp_size > 1:
        for stage in range(pp_size):
            created = torch.distributed.new_group(list(range(stage * tp_size, (stage + 1) * tp_size)))
            if stage == pp_rank:
                group = created
    return ParallelContext(tp_rank, tp_size, pp_rank, pp_size, group, progress)


# The ordinary case, and the default of every parallel layer: one device, no communication.
SINGLE_DEVICE = ParallelContext()
