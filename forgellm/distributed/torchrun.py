"""Running under torchrun: each process is one rank, placed by torch.distributed's env:// variables.

`torchrun --nproc-per-node 2 -m forgellm serve MODEL --tensor-parallel-size 2` (add torchrun's `--nnodes`,
`--node-rank`, `--master-addr` and `--master-port` for several nodes) starts every rank itself: rank 0 runs
the engine and the server as usual, without starting workers of its own, and every other rank runs its shard
(`forgellm.worker.tp_worker.run_worker`). All of them meet through `init_method="env://"`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from forgellm.config import EngineConfig
from forgellm.errors import ConfigError

INIT_METHOD = "env://"


@dataclass(frozen=True)
class TorchrunRank:
    """Where torchrun placed this process."""

    rank: int
    world_size: int
    local_rank: int  # its GPU on this node
    local_world_size: int

    @property
    def nnodes(self) -> int:
        return max(1, self.world_size // self.local_world_size)


def torchrun_rank(environ: Mapping[str, str] | None = None) -> TorchrunRank | None:
    """This process's rank when torchrun started it (TORCHELASTIC_RUN_ID and RANK are set), else None."""
    env = os.environ if environ is None else environ
    if "TORCHELASTIC_RUN_ID" not in env or "RANK" not in env:
        return None
    world = int(env["WORLD_SIZE"])
    return TorchrunRank(
        int(env["RANK"]), world, int(env.get("LOCAL_RANK", env["RANK"])), int(env.get("LOCAL_WORLD_SIZE", world))
    )


def check_torchrun_config(config: EngineConfig, launched: TorchrunRank) -> None:
    """A ConfigError naming the numbers when torchrun's ranks do not match the engine's parallel layout."""
    tp, pp = config.tensor_parallel_size, config.pipeline_parallel_size
    if launched.world_size != tp * pp:
        raise ConfigError(
            f"torchrun started {launched.world_size} process(es) (--nproc-per-node x --nnodes); tensor_parallel_size "
            f"{tp} x pipeline_parallel_size {pp} needs {tp * pp}"
        )
    if config.nnodes > 1 or config.node_rank > 0:
        raise ConfigError("under torchrun, give --nnodes and --node-rank to torchrun, not to forgellm")
    if config.data_parallel_size > 1:
        raise ConfigError("data_parallel_size > 1 is not supported under torchrun: start forgellm serve directly")
