"""Two "nodes" on one machine: `forgellm serve --nnodes 2 --node-rank 0` (the engine, rank 0, and the HTTP
server) and `forgellm serve --nnodes 2 --node-rank 1` (its ranks only) meet at --master-addr:--master-port and
serve one model, tensor-parallel over the two nodes and pipeline-parallel too: the openai client gets one
device's answer; when node 0 stops, node 1's ranks stop and it exits 0. Bad multi-node options are refused by
name."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from forgellm import LLM, SamplingParams
from forgellm.config import EngineConfig
from forgellm.errors import ConfigError
from tests.serve.http_helpers import free_port
from tests.serve.serve_process import start_serve


@pytest.mark.parametrize(
    "split", [["--tensor-parallel-size", "2"], ["--pipeline-parallel-size", "2"]], ids=["tp", "pp"]
)
def test_two_nodes_on_one_machine_serve_one_model(tiny_model_dir, tmp_path, split) -> None:
    path = str(tiny_model_dir("llama-gqa4-llama3"))
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    expected = LLM(path, dtype="float32").generate(["def f(x):"], params, use_tqdm=False)[0].outputs[0].text
    common = ["--model", path, "--dtype", "float32", "--max-model-len", "256", *split, "--nnodes", "2",
              "--master-addr", "127.0.0.1", "--master-port", str(free_port())]  # fmt: skip
    log = (tmp_path / "node1.log").open("w")
    node1 = subprocess.Popen(
        [sys.executable, "-m", "forgellm", "serve", *common, "--node-rank", "1"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        server = start_serve(*common, "--node-rank", "0", "--served-model-name", "tiny")
        try:
            client = server.client()
            reply = client.completions.create(
                model="tiny", prompt="def f(x):", max_tokens=8, temperature=0, extra_body={"ignore_eos": True}
            )
            assert reply.choices[0].text == expected
        finally:
            server.stop()
        assert node1.wait(timeout=60) == 0, (tmp_path / "node1.log").read_text()
    finally:
        if node1.poll() is None:
            node1.kill()
            node1.wait()
        log.close()


def test_bad_multi_node_options_are_refused_by_name(tiny_model_dir) -> None:
    with pytest.raises(ConfigError, match="give master_port"):
        EngineConfig(tensor_parallel_size=2, nnodes=2)
    with pytest.raises(ConfigError, match=r"3 nodes cannot share .* = 2 ranks evenly"):
        EngineConfig(tensor_parallel_size=2, nnodes=3, master_port=29500)
    with pytest.raises(ConfigError, match=r"node_rank must be in \[0, nnodes\) = \[0, 2\), got 2"):
        EngineConfig(tensor_parallel_size=2, nnodes=2, node_rank=2, master_port=29500)
    with pytest.raises(ConfigError, match="node_rank 1 runs only its ranks"):
        LLM(str(tiny_model_dir("llama")), tensor_parallel_size=2, nnodes=2, node_rank=1, master_port=29500)


def test_a_node_whose_ranks_fail_exits_non_zero(tiny_model_dir) -> None:
    """Node 1 started without a node 0 to meet: its ranks give up after distributed_timeout_s and the node's exit
    status says so (a supervisor restarts it)."""
    from forgellm.distributed.executor import run_node

    config = EngineConfig(
        model=str(tiny_model_dir("llama")), tensor_parallel_size=2, nnodes=2, node_rank=1,
        master_port=free_port(), distributed_timeout_s=2,
    )  # fmt: skip
    assert run_node(config) != 0


def test_a_timeout_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="distributed_timeout_s must be > 0, got 0"):
        EngineConfig(distributed_timeout_s=0)
