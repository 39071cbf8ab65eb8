"""Parallel state: ranks, world size and the collectives layers need."""

from forgellm.distributed.parallel_state import ParallelContext

__all__ = ["ParallelContext"]
