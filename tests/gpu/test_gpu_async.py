"""Asynchronous scheduling on a GPU: the same tokens as without it, steps really in flight, pinned staging.

With async_scheduling on, step N+1 is launched before step N's sampled ids are read; its inputs are
staged in one of two pinned buffers and its results land in pinned memory behind a CUDA event. On
a CPU none of that happens (no events, no pinning), so only a GPU can check it.
"""

from __future__ import annotations

import pytest
import torch

from forgellm import SamplingParams
from tests.gpu.helpers import completions, count_calls, greedy, random_prompts

pytestmark = pytest.mark.gpu

MODELS = ["demo", "llama"]


def mixed_params() -> list[SamplingParams]:
    """Greedy, seeded sampling, penalties and min_tokens (which need the tokens still in flight), n > 1."""
    return [
        greedy(20, logprobs=2),
        SamplingParams(temperature=1.0, seed=11, max_tokens=20, ignore_eos=True, top_k=50, top_p=0.9),
        SamplingParams(
            temperature=0.8,
            seed=5,
            max_tokens=16,
            min_tokens=8,
            presence_penalty=1.5,
            frequency_penalty=0.5,
            repetition_penalty=1.3,
        ),
        # Greedy with a penalty: repeats its own last tokens unless the penalty sees the ones in flight.
        greedy(16, presence_penalty=2.0, frequency_penalty=1.0),
        greedy(16, repetition_penalty=1.5),
        SamplingParams(temperature=1.0, seed=9, n=3, max_tokens=12, ignore_eos=True, prompt_logprobs=1),
        SamplingParams(temperature=0.7, max_tokens=12, ignore_eos=True, min_p=0.05, seed=3),
    ]


def run(llm, prompts, params):  # noqa: ANN001, ANN201 - an LLM, its inputs; the outputs
    outputs = llm.generate(prompts, params, use_tqdm=False)
    tokens = completions(outputs)
    reasons = [[c.finish_reason for c in out.outputs] for out in outputs]
    logprob_ids = [
        [None if c.logprobs is None else [sorted(e) for e in c.logprobs] for c in o.outputs] for o in outputs
    ]
    return tokens, reasons, logprob_ids


@pytest.mark.parametrize("model", MODELS)
def test_async_matches_sync(engines, model: str) -> None:
    on, off = engines(model, async_scheduling="on"), engines(model, async_scheduling="off")
    assert on.engine.core.async_scheduling and not off.engine.core.async_scheduling
    params = mixed_params()
    prompts = random_prompts([8, 3, 37, 2, 15, 11, 60], seed=4)
    assert run(on, prompts, params) == run(off, prompts, params)


@pytest.mark.parametrize("model", MODELS)
def test_async_matches_sync_greedy_at_every_batch_size(engines, model: str) -> None:
    on, off = engines(model, async_scheduling="on"), engines(model, async_scheduling="off")
    for batch_size in (1, 5, 16, 21):  # 21: more requests than max_num_seqs, some wait their turn
        prompts = random_prompts([4 + (5 * i) % 30 for i in range(batch_size)], seed=batch_size)
        assert run(on, prompts, greedy(12)) == run(off, prompts, greedy(12)), batch_size


def test_steps_are_in_flight_behind_cuda_events(engines, monkeypatch) -> None:
    """Step N+1 is launched before step N is collected; each step's results wait on its own CUDA event."""
    llm = engines("llama", async_scheduling="on")
    runner = llm.engine.core.runner
    order: list[str] = []
    collected = []
    launch, collect = runner.launch, runner.collect

    def recording_launch(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        order.append("launch")
        return launch(*args, **kwargs)

    def recording_collect(step):  # noqa: ANN001, ANN202
        order.append("collect")
        collected.append(step)
        return collect(step)

    monkeypatch.setattr(runner, "launch", recording_launch)
    monkeypatch.setattr(runner, "collect", recording_collect)
    llm.generate(random_prompts([6, 12], seed=5), greedy(8), use_tqdm=False)
    assert order[:3] == ["launch", "launch", "collect"], order  # the second step launched before the first is read
    assert order.count("collect") == order.count("launch")
    for step in collected:
        assert isinstance(step.done, torch.cuda.Event) and step.done.query()
        assert step.sampled.is_cuda and step.sampled_host.device.type == "cpu" and step.sampled_host.is_pinned()


def test_sync_engine_collects_each_step_before_the_next(engines, monkeypatch) -> None:
    llm = engines("llama", async_scheduling="off")
    runner = llm.engine.core.runner
    order: list[str] = []
    launch, collect = runner.launch, runner.collect
    monkeypatch.setattr(runner, "launch", lambda *a, **k: order.append("launch") or launch(*a, **k))
    monkeypatch.setattr(runner, "collect", lambda step: order.append("collect") or collect(step))
    llm.generate(random_prompts([6, 12], seed=5), greedy(8), use_tqdm=False)
    assert order == ["launch", "collect"] * (len(order) // 2)


def test_step_inputs_go_through_the_two_pinned_stagings(engines, monkeypatch) -> None:
    """Every input field of every step is copied into a pinned staging buffer, alternating between two."""
    llm = engines("llama", async_scheduling="on")
    runner = llm.engine.core.runner
    assert len(runner.stagings) == 2
    for staging in runner.stagings:
        assert all(buffer.is_pinned() for buffer in staging.buffers.values()) and staging.sampled.is_pinned()
    field_of = lambda field, values, dtype: field
    puts = [count_calls(monkeypatch, staging, "put", key=field_of) for staging in runner.stagings]
    sampled_buffers = {s.sampled.data_ptr() for s in runner.stagings}
    steps = []
    collect = runner.collect
    monkeypatch.setattr(runner, "collect", lambda step: steps.append(step) or collect(step))
    # A placeholder per decode step: async steps take the token in flight straight from the device.
    llm.generate(random_prompts([6, 12, 30], seed=6), greedy(8), use_tqdm=False)
    num_steps = len(steps)
    assert num_steps == 8  # one prefill step, seven decode steps
    fields = {"input_ids", "positions", "slot_mapping", "logits_indices", "query_start_loc", "seq_lens", "block_tables"}
    for counts in puts:  # alternating: each staging serves half the steps
        assert {f: counts[f] for f in fields} == dict.fromkeys(fields, num_steps // 2)
    assert sum(counts["placeholders"] for counts in puts) == num_steps - 1  # every step after the first
    assert all(step.sampled_host.data_ptr() in sampled_buffers for step in steps)
