"""`forgellm serve`'s engine (in its child process) under tensor_parallel_size 2 or pipeline_parallel_size 2 on
the CPU: the openai client gets the single-device answer, streamed and not. A real `forgellm serve` process
whose other rank is killed: the next request fails naming the rank, /health turns 503, and the server exits
non-zero so a supervisor can restart it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import openai
import pytest

from forgellm import LLM, SamplingParams
from forgellm.cli.serve import EXIT_ENGINE_DIED
from forgellm.engine.process_engine import ProcessAsyncLLM
from tests.serve.serve_process import start_serve


@pytest.mark.parametrize("split", [{"tensor_parallel_size": 2}, {"pipeline_parallel_size": 2}], ids=["tp2", "pp2"])
def test_a_split_server_answers_as_one_device(server_factory, tiny_model_dir, split) -> None:
    path = str(tiny_model_dir("llama-gqa4-llama3"))
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    expected = LLM(path, dtype="float32").generate(["def f(x):"], params, use_tqdm=False)[0].outputs[0].text
    server = server_factory(engine_class=ProcessAsyncLLM, model=path, max_model_len=256, **split)
    client = server.client()
    options = dict(model=server.settings.model_name, prompt="def f(x):", max_tokens=8, temperature=0)
    reply = client.completions.create(**options, extra_body={"ignore_eos": True})
    assert reply.choices[0].text == expected
    streamed = client.completions.create(**options, extra_body={"ignore_eos": True}, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == expected


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def test_a_dead_rank_turns_health_503_and_the_server_exits_non_zero(tiny_model_dir) -> None:
    path = str(tiny_model_dir("llama"))
    server = start_serve(
        "--model", path, "--served-model-name", "tiny", "--dtype", "float32", "--max-model-len", "256",
        "--pipeline-parallel-size", "2",
    )  # fmt: skip
    try:
        client = server.client()
        ok = client.completions.create(model="tiny", prompt="hi", max_tokens=2)
        assert ok.choices[0].finish_reason in ("stop", "length")
        workers = [
            pid for pid in _descendants(server.process.pid)
            if b"forgellm.worker.tp_worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]  # fmt: skip
        assert len(workers) == 1
        os.kill(workers[0], signal.SIGKILL)
        with pytest.raises(openai.APIStatusError) as err:
            client.completions.create(model="tiny", prompt="hi", max_tokens=2)
        assert "rank 1 exited" in str(err.value.body), err.value.body
        assert server.health() == 503  # until the server exits, DEAD_ENGINE_EXIT_DELAY_S later
        assert server.wait_exit(timeout=60) == EXIT_ENGINE_DIED
    finally:
        server.stop()
