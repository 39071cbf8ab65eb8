"""Heartbeats: how many steps each rank of this node has picked up, in a small shared file.

Rank 0 counts a step when it broadcasts it, a worker when it has received it. When a collective times out,
rank 0 can then name a rank that never picked the step up (stopped, or stuck before it). A rank that hangs
inside a forward pass holds the others in the same collective, so counts cannot tell it apart; ranks on
other nodes have no file here.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np


class Heartbeats:
    """int64 [world] step counters in a memory-mapped file: rank r writes slot r, rank 0 reads them all."""

    def __init__(self, path: str, world_size: int, rank: int, create: bool = False) -> None:
        self.path, self.rank = path, rank
        self.counts = np.memmap(path, dtype=np.int64, mode="w+" if create else "r+", shape=(world_size,))

    @classmethod
    def create(cls, world_size: int) -> Heartbeats:
        """Rank 0's side: a fresh zeroed file (removed by `close`)."""
        handle, path = tempfile.mkstemp(prefix="forgellm-heartbeat-", suffix=".bin")
        os.close(handle)
        return cls(path, world_size, 0, create=True)

    def beat(self) -> None:
        """This rank picked up one more step."""
        self.counts[self.rank] += 1

    def lagging(self, ranks: range) -> list[tuple[int, int, int]]:
        """(rank, steps it picked up, steps rank 0 sent) for each of `ranks` behind rank 0."""
        sent = int(self.counts[0])
        return [(rank, int(self.counts[rank]), sent) for rank in ranks if int(self.counts[rank]) < sent]

    def close(self, remove: bool = False) -> None:
        del self.counts
        if remove:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
