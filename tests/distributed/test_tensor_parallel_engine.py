"""The whole engine under tensor_parallel_size 2 on the CPU (this process is rank 0, one gloo worker process is
rank 1): batched requests, chunked prefill, prefix caching, preemption and an abort give TP=1's greedy tokens;
bad parallel configurations are refused by name; the worker stops with the engine."""

from __future__ import annotations

import pytest

from forgellm import LLM, SamplingParams
from forgellm.errors import ConfigError

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
PROMPTS = [[5, 6, 7, 8, 9], list(range(100, 141)), [42] * 3, list(range(300, 322))]


def tokens(llm: LLM, prompts: list[list[int]]) -> list[list[int]]:
    return [out.outputs[0].token_ids for out in llm.generate(prompts, GREEDY, use_tqdm=False)]


def assert_split_engine_gives_one_devices_tokens(path: str, **split: int) -> LLM:
    """The engine split over ranks (`split`: tensor_parallel_size / pipeline_parallel_size) gives one device's greedy
    tokens through 16-token chunks, a 20-block cache that must preempt, prefix hits and an abort; the split LLM is
    returned shut down (its workers stopped)."""
    options = dict(dtype="float32", block_size=4, max_num_batched_tokens=16, num_kv_blocks=20, max_num_seqs=4)
    expected = tokens(LLM(path, **options), PROMPTS + PROMPTS[:2])
    sharded = LLM(path, **split, **options)
    try:
        world = split.get("tensor_parallel_size", 1) * split.get("pipeline_parallel_size", 1)
        assert sharded.engine.executor is not None and sharded.engine.executor.world_size == world
        assert tokens(sharded, PROMPTS + PROMPTS[:2]) == expected
        stats = sharded.engine.stats()
        assert stats.num_preemptions > 0 and stats.prefix_cache_hit_rate > 0
        sharded.engine.add_request("gone", PROMPTS[1], GREEDY)
        sharded.engine.step()
        sharded.engine.abort_request("gone")
        assert tokens(sharded, PROMPTS[:1]) == expected[:1]  # the ranks stay in step after an abort
    finally:
        sharded.engine.shutdown()
    assert all(worker.poll() is not None for worker in sharded.engine.executor.workers)
    return sharded


@pytest.mark.parametrize("variant", ["llama-gqa4-llama3", "llama-mqa-dynamic"])  # KV heads split / replicated
def test_engine_under_tp2_gives_tp1_tokens(variant, tiny_model_dir) -> None:
    assert_split_engine_gives_one_devices_tokens(str(tiny_model_dir(variant)), tensor_parallel_size=2)


def test_the_start_up_log_names_every_rank_and_its_share(tiny_model_dir, caplog) -> None:
    caplog.set_level("INFO", logger="forgellm")
    llm = LLM(str(tiny_model_dir("llama-mqa-dynamic")), tensor_parallel_size=2, dtype="float32")
    llm.engine.shutdown()
    text = caplog.text
    assert "tensor parallel over 2 ranks (gloo)" in text
    # MQA: the one KV head is replicated on both ranks.
    assert (
        "rank 0 on cpu: 2 of 4 query heads, KV head 0" in text
        and "rank 1 on cpu: 2 of 4 query heads, KV head 0" in text
    )


@pytest.mark.parametrize("variant", ["llama-gqa4-llama3", "qwen2"])
def test_engine_under_tp2_with_asynchronous_scheduling_gives_tp1_tokens(variant, tiny_model_dir) -> None:
    """The next step launches before the tokens of the one in flight reach the host: the other rank takes them
    from rank 0's device (a broadcast after the step's batch)."""
    sharded = assert_split_engine_gives_one_devices_tokens(
        str(tiny_model_dir(variant)), tensor_parallel_size=2, async_scheduling="on"
    )
    assert sharded.engine.core.async_scheduling


def test_parallel_configurations_that_cannot_run_are_refused(tiny_model_dir) -> None:
    with pytest.raises(ConfigError, match=r"tensor_parallel_size 3 cannot split 4 attention heads"):
        LLM(str(tiny_model_dir("llama")), tensor_parallel_size=3)


def test_a_rank_that_dies_ends_the_engine_naming_it(tiny_model_dir) -> None:
    from forgellm.errors import EngineDeadError

    llm = LLM(str(tiny_model_dir("llama")), tensor_parallel_size=2, dtype="float32")
    try:
        worker = llm.engine.executor.workers[0]
        worker.kill()
        worker.wait()
        with pytest.raises(EngineDeadError, match="tensor-parallel rank 1 exited"):
            llm.generate([[5, 6, 7]], GREEDY, use_tqdm=False)
    finally:
        llm.engine.shutdown()
