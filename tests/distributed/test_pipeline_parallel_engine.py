"""The whole engine under pipeline parallelism on the CPU (this process is rank 0 and the first stage; gloo
worker processes run the other stages, and with tensor parallelism inside each stage the other shards):
batched requests, chunked prefill, prefix caching, preemption and an abort give one device's greedy tokens;
the start-up log names every rank's stage and layers; configurations that cannot be split are refused by
name; a dead stage ends the engine naming its rank, a hung rank within distributed_timeout_s, an idle engine
lives on; each rank sizes its KV cache by its own share of layers and heads."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from forgellm import LLM
from forgellm.errors import ConfigError, EngineDeadError
from forgellm.worker.kv_cache_memory import kv_block_bytes
from tests.distributed.test_tensor_parallel_engine import (
    GREEDY,
    PROMPTS,
    assert_split_engine_gives_one_devices_tokens,
    tokens,
)


@pytest.mark.parametrize(
    ("variant", "tp", "pp"),
    [("llama-gqa4-llama3", 1, 2), ("qwen2", 1, 2), ("llama-gqa4-llama3", 2, 2)],  # qwen2: a tied LM head
)
def test_engine_under_pipeline_parallelism_gives_one_devices_tokens(variant, tp, pp, tiny_model_dir, caplog) -> None:
    """With one batch in flight per stage (each over its own requests) the tokens are one device's."""
    with caplog.at_level(logging.INFO, logger="forgellm"):
        sharded = assert_split_engine_gives_one_devices_tokens(
            str(tiny_model_dir(variant)), tensor_parallel_size=tp, pipeline_parallel_size=pp
        )
    assert sharded.engine.core.max_steps_in_flight == pp
    log = caplog.text
    assert f"pipeline parallel {pp} over {tp * pp} ranks" in log and f"{pp} batches in flight" in log
    assert "rank 0 on cpu: stage 0 (layers 0-0)" in log and f"rank {tp * pp - 1} on cpu: stage 1 (layers 1-1)" in log


def test_stages_taking_turns_give_one_devices_tokens_too(tiny_model_dir) -> None:
    sharded = assert_split_engine_gives_one_devices_tokens(
        str(tiny_model_dir("llama")), pipeline_parallel_size=2, pipeline_micro_batches=1
    )
    assert not hasattr(sharded.engine.core, "max_steps_in_flight")  # the synchronous core


def test_pipeline_configurations_that_cannot_run_are_refused(tiny_model_dir) -> None:
    path = str(tiny_model_dir("llama"))
    with pytest.raises(ConfigError, match=r"pipeline_parallel_size 3 cannot split 2 decoder layers: every stage"):
        LLM(path, pipeline_parallel_size=3)
    with pytest.raises(ConfigError, match="pipeline_parallel_size > 1 overlaps batches its own way"):
        LLM(path, pipeline_parallel_size=2, async_scheduling="on")
    with pytest.raises(ConfigError, match="pipeline_parallel_size must be a positive integer"):
        LLM(path, pipeline_parallel_size=0)
    with pytest.raises(ConfigError, match="pipeline_micro_batches must be an integer >= 0"):
        LLM(path, pipeline_parallel_size=2, pipeline_micro_batches=-1)


def test_layers_that_do_not_split_evenly_give_the_later_stage_one_more(caplog) -> None:
    """The demo's 11 layers over 2 stages: 5 and 6 layers, one device's greedy tokens, and a KV cache sized by the
    larger stage (the same budget holds 11/6 of one device's blocks, on both ranks)."""
    budget = dict(dtype="float32", cpu_kv_cache_gb=0.002, max_num_seqs=256)
    prompts = [[5, 6, 7, 8, 9], [11, 12], [20, 21, 22, 23]]
    one = LLM(None, **budget)
    expected = tokens(one, prompts)
    layer_bytes = kv_block_bytes(one.engine.core.runner.model, 16, torch.float32) // 11
    with caplog.at_level(logging.INFO, logger="forgellm"):
        split = LLM(None, pipeline_parallel_size=2, **budget)
    try:
        assert "stage 0 (layers 0-4)" in caplog.text and "stage 1 (layers 5-10)" in caplog.text
        assert split.engine.core.runner.num_blocks == int(0.002 * 2**30 // (6 * layer_bytes))
        assert tokens(split, prompts) == expected
    finally:
        split.engine.shutdown()


def test_a_dead_stage_ends_the_engine_naming_its_rank(tiny_model_dir) -> None:
    llm = LLM(str(tiny_model_dir("llama")), pipeline_parallel_size=2, dtype="float32")
    try:
        worker = llm.engine.executor.workers[0]
        worker.kill()
        worker.wait()
        with pytest.raises(EngineDeadError, match="parallel rank 1 exited"):
            llm.generate([[5, 6, 7]], GREEDY, use_tqdm=False)
    finally:
        llm.engine.shutdown()


@pytest.mark.parametrize("split", [{"tensor_parallel_size": 2}, {"pipeline_parallel_size": 2}], ids=["tp2", "pp2"])
def test_an_error_in_rank_0s_forward_pass_ends_the_engine_instead_of_leaving_the_ranks_out_of_step(
    tiny_model_dir, split, monkeypatch
) -> None:
    """The other ranks run the batch without rank 0: failing only the step's requests would leave a pipeline's
    last stage sending those logits to rank 0's next receive (another batch's)."""
    llm = LLM(str(tiny_model_dir("llama")), dtype="float32", **split)
    try:

        def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            raise ValueError("injected")

        monkeypatch.setattr(llm.engine.core.runner.model, "forward", broken)
        with pytest.raises(EngineDeadError, match=r"rank 0's part of a .*forward pass failed.*ValueError: injected"):
            llm.generate([[5, 6, 7]], GREEDY, use_tqdm=False)
    finally:
        llm.engine.shutdown()


@pytest.mark.parametrize("split", [{"tensor_parallel_size": 2}, {"pipeline_parallel_size": 2}], ids=["tp2", "pp2"])
def test_a_hung_rank_ends_the_engine_within_the_timeout_naming_it(tiny_model_dir, split) -> None:
    """A rank that stops answering (SIGSTOP: alive, not running) is named within distributed_timeout_s of the
    step it never picked up, instead of the engine waiting for ever."""
    import os
    import signal
    import time

    llm = LLM(str(tiny_model_dir("llama")), dtype="float32", distributed_timeout_s=3, **split)
    try:
        assert len(tokens(llm, [[5, 6, 7]])[0]) == GREEDY.max_tokens
        worker = llm.engine.executor.workers[0]
        os.kill(worker.pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(EngineDeadError, match=r"rank 1 \(picked up \d+ of \d+ steps\) did not answer within 3 s"):
            llm.generate([[5, 6, 7]], GREEDY, use_tqdm=False)
        assert time.monotonic() - started < 60  # the timeout, not a hang (generous for a loaded machine)
    finally:
        llm.engine.shutdown()  # kills the stopped rank after telling it fails


@pytest.mark.parametrize(
    ("split", "named"),
    [
        ({"tensor_parallel_size": 2}, r"rank 1 \(entered \d+ of \d+ collectives\): stuck inside forward pass \d+"),
        ({"pipeline_parallel_size": 2}, r"rank 1 \(stage 1, its part of forward pass \d+ never finished\)"),
    ],
    ids=["tp2", "pp2"],
)
def test_a_rank_stuck_inside_a_forward_pass_is_named(tiny_model_dir, tmp_path, monkeypatch, split, named) -> None:
    """Rank 1 picks the step up, then stops inside its forward pass (tests/fixtures/hang_inside_forward): its peers
    wait in the next collective (TP) or for its stage (PP). The heartbeat's counts of collectives entered and
    forward passes finished name it within distributed_timeout_s."""
    import time
    from pathlib import Path

    flag = tmp_path / "hang"
    repo = Path(__file__).resolve().parents[2]  # sitecustomize imports forgellm before the cwd is on sys.path
    paths = [str(repo / "tests" / "fixtures" / "hang_inside_forward"), str(repo), os.environ.get("PYTHONPATH")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, paths)))
    monkeypatch.setenv("FORGELLM_TEST_HANG_FLAG", str(flag))
    llm = LLM(str(tiny_model_dir("llama")), dtype="float32", distributed_timeout_s=3, **split)
    try:
        assert len(tokens(llm, [[5, 6, 7]])[0]) == GREEDY.max_tokens
        flag.touch()
        started = time.monotonic()
        with pytest.raises(EngineDeadError, match=named + r".*nothing moved within 3 s"):
            llm.generate([[5, 6, 7]], GREEDY, use_tqdm=False)
        assert time.monotonic() - started < 60
    finally:
        llm.engine.shutdown()


@pytest.mark.parametrize("split", [{"tensor_parallel_size": 2}, {"pipeline_parallel_size": 2}], ids=["tp2", "pp2"])
def test_each_rank_sizes_its_kv_cache_by_its_own_share(tiny_model_dir, split) -> None:
    """A rank holds half the layers (PP) or half the KV heads (TP, 2 KV heads): the same memory budget holds
    twice the blocks, and the start-up log's GiB is the rank's."""
    path = str(tiny_model_dir("llama"))
    budget = dict(dtype="float32", block_size=4, cpu_kv_cache_gb=0.0005, max_num_seqs=64)
    one = LLM(path, **budget).engine.core.runner.num_blocks
    split_llm = LLM(path, **budget, **split)
    try:
        assert split_llm.engine.core.runner.num_blocks == 2 * one
    finally:
        split_llm.engine.shutdown()


@pytest.mark.parametrize("split", [{"tensor_parallel_size": 2}, {"pipeline_parallel_size": 2}], ids=["tp2", "pp2"])
def test_the_memory_profile_runs_on_every_rank_and_the_engine_goes_on(tiny_model_dir, split) -> None:
    """Sizing the KV cache on a GPU runs the largest step's forward pass: every rank runs it with rank 0 (their
    collectives and stage hand-offs pair up instead of waiting for ever) over a scratch cache; after the real
    cache is given back on every rank, the engine's tokens are one device's."""
    path = str(tiny_model_dir("llama-gqa4-llama3"))
    options = dict(dtype="float32", block_size=4, num_kv_blocks=40)
    expected = tokens(LLM(path, **options), PROMPTS[:2])
    split_llm = LLM(path, **options, **split)
    try:
        runner = split_llm.engine.core.runner
        vocab = runner.arch.vocab_size
        assert runner.profile_peak_memory(24, 3) == 3 * 3 * vocab * 4  # a CPU has no GPU peak: the sampler's share
        runner.allocate_kv_cache(40)
        split_llm.engine.executor.broadcast(40)
        assert tokens(split_llm, PROMPTS[:2]) == expected
    finally:
        split_llm.engine.shutdown()


@pytest.mark.parametrize("split", [{"tensor_parallel_size": 2}, {"pipeline_parallel_size": 2}], ids=["tp2", "pp2"])
def test_an_engine_idle_longer_than_the_timeout_still_serves(tiny_model_dir, split) -> None:
    """The other ranks wait for the next step as long as the engine idles: distributed_timeout_s bounds a
    step's collectives, not the wait between steps (it used to end every worker of an idle engine)."""
    import time

    llm = LLM(str(tiny_model_dir("llama")), dtype="float32", distributed_timeout_s=1, **split)
    try:
        first = tokens(llm, [[5, 6, 7]])
        time.sleep(3)
        assert all(worker.poll() is None for worker in llm.engine.executor.workers)
        assert tokens(llm, [[5, 6, 7]]) == first
    finally:
        llm.engine.shutdown()
