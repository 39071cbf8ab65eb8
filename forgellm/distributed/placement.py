"""Which GPU each rank and each data-parallel replica uses on a node.

An engine's ranks take consecutive GPUs from the one its `device` names (`cuda:N`, else GPU 0): rank 0 the
first, local rank r the r-th after it. Data-parallel replicas take consecutive blocks of GPUs, one block of
tensor x pipeline ranks per replica, so two replicas never share a GPU.
"""

from __future__ import annotations

import dataclasses

from forgellm.config import EngineConfig
from forgellm.errors import ConfigError


def first_gpu(device: str) -> int:
    """The GPU a device option names: N for 'cuda:N', 0 for 'cuda' or 'auto'."""
    return int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0


def ranks_per_node(config: EngineConfig) -> int:
    """Ranks of one engine on each node: tensor x pipeline ranks shared evenly by its nodes."""
    return config.tensor_parallel_size * config.pipeline_parallel_size // config.nnodes


def rank_gpu(config: EngineConfig, local_rank: int) -> int:
    """The GPU of an engine's local rank `local_rank` (rank 0 is local rank 0 on node 0)."""
    return first_gpu(config.device) + local_rank


def replica_configs(config: EngineConfig, gpu_count: int, cpu_count: int) -> list[EngineConfig]:
    """Each data-parallel replica's options (data_parallel_size 1): its own GPUs, or on the CPU its share of the
    `cpu_count` cores unless cpu_threads says otherwise (replicas that each take every core run many times slower:
    measured 14x at 2 replicas on 2 cores)."""
    devices = replica_devices(config, gpu_count)
    shared = dataclasses.replace(config, data_parallel_size=1)
    if not devices[0].startswith("cuda") and config.cpu_threads is None:  # 'cpu', or 'auto' without a GPU
        shared = dataclasses.replace(shared, cpu_threads=max(1, cpu_count // config.data_parallel_size))
    return [dataclasses.replace(shared, device=device) for device in devices]


def replica_devices(config: EngineConfig, gpu_count: int) -> list[str]:
    """The device option of each of `config.data_parallel_size` replicas, with `gpu_count` GPUs on the node
    (0: none, or a CPU engine, where every replica's is the config's); a ConfigError naming the numbers when
    the replicas' GPUs are not all there."""
    replicas = config.data_parallel_size
    if gpu_count == 0 or config.device == "cpu":
        return [config.device] * replicas
    world, first = ranks_per_node(config), first_gpu(config.device)
    needed = first + replicas * world
    if needed > gpu_count:
        raise ConfigError(
            f"data_parallel_size {replicas} x tensor_parallel_size {config.tensor_parallel_size} x "
            f"pipeline_parallel_size {config.pipeline_parallel_size} needs GPUs {first}-{needed - 1}; "
            f"{gpu_count} visible"
        )
    return [f"cuda:{first + index * world}" for index in range(replicas)]
