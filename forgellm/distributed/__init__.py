"""Parallel state: ranks, world size and the collectives layers need."""

from forgellm.distributed.parallel_state import SINGLE_DEVICE, ParallelContext

__all__ = ["SINGLE_DEVICE", "ParallelContext"]
