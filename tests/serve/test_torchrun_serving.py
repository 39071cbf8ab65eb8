"""`torchrun --nproc-per-node 2 -m forgellm serve ... --tensor-parallel-size 2`: torchrun starts both ranks,
rank 0 serves and rank 1 runs its shard, meeting through env://; the openai client gets one device's answer.
Layouts torchrun cannot serve are refused by name."""

from __future__ import annotations

import pytest

from forgellm import LLM, SamplingParams
from forgellm.config import EngineConfig
from forgellm.distributed.torchrun import TorchrunRank, check_torchrun_config, torchrun_rank
from forgellm.errors import ConfigError
from tests.serve.http_helpers import free_port
from tests.serve.serve_process import start_serve

TORCHRUN_ENV = {"TORCHELASTIC_RUN_ID": "x", "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}


@pytest.mark.parametrize(
    "split", [["--tensor-parallel-size", "2"], ["--pipeline-parallel-size", "2"]], ids=["tp", "pp"]
)
def test_torchrun_starts_the_ranks_and_they_serve_one_model(tiny_model_dir, split) -> None:
    path = str(tiny_model_dir("llama-gqa4-llama3"))
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    expected = LLM(path, dtype="float32").generate(["def f(x):"], params, use_tqdm=False)[0].outputs[0].text
    torchrun = ("-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                "--master-port", str(free_port()))  # fmt: skip
    server = start_serve(
        "--model", path, "--dtype", "float32", "--max-model-len", "256", *split, "--served-model-name", "tiny",
        launcher=torchrun,
    )  # fmt: skip
    try:
        reply = server.client().completions.create(
            model="tiny", prompt="def f(x):", max_tokens=8, temperature=0, extra_body={"ignore_eos": True}
        )
        assert reply.choices[0].text == expected
        assert "torchrun rank 1 of 2: running its shard" in server.output()
    finally:
        server.stop()
    assert server.process.poll() is not None, server.output()


def test_torchrun_rank_reads_torchruns_variables_only_under_torchrun() -> None:
    assert torchrun_rank({}) is None
    assert torchrun_rank({"RANK": "1", "WORLD_SIZE": "2"}) is None  # not torchrun (e.g. a batch system)
    assert torchrun_rank(TORCHRUN_ENV) == TorchrunRank(rank=3, world_size=4, local_rank=1, local_world_size=2)
    assert torchrun_rank(TORCHRUN_ENV).nnodes == 2


def test_layouts_torchrun_cannot_serve_are_refused_by_name(tiny_model_dir, monkeypatch) -> None:
    launched = TorchrunRank(rank=0, world_size=2, local_rank=0, local_world_size=2)
    with pytest.raises(ConfigError, match=r"torchrun started 2 process\(es\).* tensor_parallel_size 4 x .* needs 4"):
        check_torchrun_config(EngineConfig(tensor_parallel_size=4), launched)
    with pytest.raises(ConfigError, match="give --nnodes and --node-rank to torchrun"):
        check_torchrun_config(EngineConfig(tensor_parallel_size=2, nnodes=2, master_port=29500), launched)
    with pytest.raises(ConfigError, match="data_parallel_size > 1 is not supported under torchrun"):
        check_torchrun_config(EngineConfig(tensor_parallel_size=2, data_parallel_size=2), launched)
    check_torchrun_config(EngineConfig(pipeline_parallel_size=2), launched)  # fits
    for name, value in {**TORCHRUN_ENV, "RANK": "1", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="torchrun rank 1 runs only its shard"):
        LLM(str(tiny_model_dir("llama")), tensor_parallel_size=2)
