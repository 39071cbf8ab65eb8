"""GPU placement of ranks and data-parallel replicas (pure arithmetic, checked without GPUs): replicas take
disjoint blocks of GPUs (they all took GPU 0 under the default device 'auto', and the ranks of tensor-parallel
replicas collided), ranks follow their engine's first GPU, and too few GPUs is a ConfigError naming them."""

from __future__ import annotations

import pytest

from forgellm.config import EngineConfig
from forgellm.distributed.placement import first_gpu, rank_gpu, replica_configs, replica_devices
from forgellm.errors import ConfigError


@pytest.mark.parametrize(
    ("options", "gpus", "expected"),
    [
        ({"data_parallel_size": 2}, 2, ["cuda:0", "cuda:1"]),  # device 'auto'
        ({"data_parallel_size": 2, "tensor_parallel_size": 2}, 4, ["cuda:0", "cuda:2"]),
        ({"data_parallel_size": 2, "tensor_parallel_size": 2, "pipeline_parallel_size": 2}, 8, ["cuda:0", "cuda:4"]),
        ({"data_parallel_size": 2, "device": "cuda:4"}, 8, ["cuda:4", "cuda:5"]),
        ({"data_parallel_size": 3, "device": "cpu"}, 8, ["cpu"] * 3),
        ({"data_parallel_size": 2}, 0, ["auto", "auto"]),  # no GPU: each replica resolves 'auto' to the CPU
    ],
)
def test_replicas_take_disjoint_blocks_of_gpus(options, gpus, expected) -> None:
    assert replica_devices(EngineConfig(**options), gpus) == expected


def test_replicas_that_need_more_gpus_than_there_are_are_refused_by_name() -> None:
    config = EngineConfig(data_parallel_size=2, tensor_parallel_size=2, device="cuda:1")
    with pytest.raises(
        ConfigError, match=r"data_parallel_size 2 x tensor_parallel_size 2 .* needs GPUs 1-4; 4 visible"
    ):
        replica_devices(config, 4)


def test_ranks_follow_their_engines_first_gpu() -> None:
    assert first_gpu("auto") == first_gpu("cuda") == 0 and first_gpu("cuda:3") == 3
    config = EngineConfig(tensor_parallel_size=2, device="cuda:2")
    assert [rank_gpu(config, local) for local in range(2)] == [2, 3]


def test_replicas_on_the_cpu_split_the_cores_unless_told() -> None:
    """Two replicas that each took every core of a 2-core machine served 14x slower than one (OpenMP pools
    fighting); split, two are faster than one."""
    config = EngineConfig(data_parallel_size=2, device="cpu")
    replicas = replica_configs(config, gpu_count=0, cpu_count=8)
    assert [(r.data_parallel_size, r.cpu_threads, r.device) for r in replicas] == [(1, 4, "cpu")] * 2
    told = replica_configs(EngineConfig(data_parallel_size=3, cpu_threads=2), gpu_count=0, cpu_count=2)
    assert [r.cpu_threads for r in told] == [2, 2, 2]
    assert [r.cpu_threads for r in replica_configs(EngineConfig(data_parallel_size=2), 2, 64)] == [None, None]
    # CPU replicas asked for on a machine with GPUs split the cores too.
    on_cpu = replica_configs(EngineConfig(data_parallel_size=2, device="cpu"), gpu_count=2, cpu_count=8)
    assert [(r.cpu_threads, r.device) for r in on_cpu] == [(4, "cpu")] * 2


def test_an_engine_on_the_cpu_takes_its_threads(tiny_model_dir) -> None:
    import torch

    from forgellm import LLM

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        LLM(str(tiny_model_dir("llama")), device="cpu", cpu_threads=1, num_kv_blocks=8)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="cpu_threads must be a positive integer"):
        EngineConfig(cpu_threads=0)
