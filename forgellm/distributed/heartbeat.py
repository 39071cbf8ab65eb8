"""Heartbeats: how far each rank of this node has got, in a small shared file.

Three counters per rank: steps picked up (rank 0 counts a step when it broadcasts it, a worker when it has
received it), tensor-parallel collectives entered, and forward passes finished (the rank's part of a step).
When a collective times out, rank 0 can then name a rank that never picked the step up (stopped, or stuck
before it), or one stuck inside a forward pass: the first pipeline stage that has not finished the step, and
in it the rank that entered fewer collectives than its peers (they wait in the next one; it never came). A
hang inside a collective or on the device leaves the counts equal: then the stage is named. Ranks on other
nodes have no file here.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

_PICKED_UP, _COLLECTIVES, _FINISHED = range(3)


class Heartbeats:
    """int64 [3, world] counters in a memory-mapped file: rank r writes column r, rank 0 reads them all."""

    def __init__(self, path: str, world_size: int, rank: int, create: bool = False) -> None:
        self.path, self.rank = path, rank
        self.counts = np.memmap(path, dtype=np.int64, mode="w+" if create else "r+", shape=(3, world_size))

    @classmethod
    def create(cls, world_size: int) -> Heartbeats:
        """Rank 0's side: a fresh zeroed file (removed by `close`)."""
        handle, path = tempfile.mkstemp(prefix="forgellm-heartbeat-", suffix=".bin")
        os.close(handle)
        return cls(path, world_size, 0, create=True)

    def beat(self) -> None:
        """This rank picked up one more step."""
        self.counts[_PICKED_UP, self.rank] += 1

    def enter_collective(self) -> None:
        """This rank enters one more tensor-parallel collective (a fraction of a microsecond: a memory write)."""
        self.counts[_COLLECTIVES, self.rank] += 1

    def finish_forward(self) -> None:
        """This rank finished its part of one more step's forward pass."""
        self.counts[_FINISHED, self.rank] += 1

    def lagging(self, ranks: range) -> list[tuple[int, int, int]]:
        """(rank, steps it picked up, steps rank 0 sent) for each of `ranks` behind rank 0."""
        sent = int(self.counts[_PICKED_UP, 0])
        picked = self.counts[_PICKED_UP]
        return [(rank, int(picked[rank]), sent) for rank in ranks if int(picked[rank]) < sent]

    def stuck_inside_forward(self, tp_size: int, pp_size: int) -> str | None:
        """Which rank (or stage) holds the others inside a forward pass, in words; None when every rank has
        finished as many forward passes as any (the hang is elsewhere). Every rank must be on this node."""
        finished, entered = self.counts[_FINISHED], self.counts[_COLLECTIVES]
        fewest, ahead = int(finished.min()), int(finished.max()) > int(finished.min())
        for stage in range(pp_size):
            ranks = range(stage * tp_size, (stage + 1) * tp_size)
            if all(int(finished[r]) > fewest for r in ranks):
                continue  # this stage is done with the step: it waits on a later one
            where = f"stage {stage}, " if pp_size > 1 else ""
            most = max(int(entered[r]) for r in ranks)
            behind = [r for r in ranks if int(entered[r]) < most]
            if behind:
                names = ", ".join(f"rank {r} ({where}entered {int(entered[r])} of {most} collectives)" for r in behind)
                return f"{names}: stuck inside forward pass {fewest + 1} while its peers wait in the next collective"
            if not ahead:  # every rank as far as the others: no sign of a forward pass that hangs
                return None
            if tp_size == 1:
                return f"rank {ranks[0]} ({where}its part of forward pass {fewest + 1} never finished)"
            listed = ", ".join(str(r) for r in ranks)
            return (
                f"ranks {listed} ({where}all inside collective {most} of forward pass {fewest + 1}: a hang in the "
                "collective itself or on a device)"
            )
        return None

    def close(self, remove: bool = False) -> None:
        del self.counts
        if remove:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
