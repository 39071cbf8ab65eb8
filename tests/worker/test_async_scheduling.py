"""Asynchronous scheduling (step N+1 launched before step N's tokens are read) changes nothing visible.

The same requests run through an engine with async_scheduling on and off must produce the same
tokens, logprobs and finish reasons: greedy and seeded sampling, penalties and min_tokens (which
need the tokens still in flight), stop tokens, stop strings, n > 1 siblings, preemption and aborts.
"""

from __future__ import annotations

import pytest

from forgellm import SamplingParams
from forgellm.config import EngineConfig
from forgellm.engine.llm_engine import LLMEngine

PROMPTS = [[11, 305, 2048, 7, 99, 1500, 3, 42], [5, 6, 7], list(range(100, 137)), [900, 901]]


def make_engine(model_dir, mode: str, **overrides) -> LLMEngine:
    options = dict(model=str(model_dir), dtype="float32", block_size=4, async_scheduling=mode, seed=3)
    return LLMEngine(EngineConfig(**(options | overrides)))


def run(engine: LLMEngine, requests: list[tuple[list[int], SamplingParams]], abort_after: dict[str, int] | None = None):
    """Generate every request to the end; `abort_after` maps request ids to the step that aborts them."""
    abort_after = abort_after or {}
    for index, (prompt, params) in enumerate(requests):
        engine.add_request(f"r{index}", prompt, params)
    finals, step = {}, 0
    while engine.has_unfinished_requests():
        for request_id, at in abort_after.items():
            if at == step:
                engine.abort_request(request_id)
        for out in engine.step():
            if out.finished:
                finals[out.request_id] = out
        step += 1
        assert step < 1000
    core = engine.core
    assert core.kv_cache.num_free_blocks == core.kv_cache.num_blocks  # nothing leaked
    return {
        request_id: [
            (c.token_ids, c.finish_reason, c.stop_reason, _logprob_ids(c.logprobs), c.text) for c in out.outputs
        ]
        + [_logprob_ids(out.prompt_logprobs)]
        for request_id, out in finals.items()
    }


def _logprob_ids(logprobs) -> list | None:  # noqa: ANN001 - a list of {token id: Logprob} or None
    if logprobs is None:
        return None
    return [None if entry is None else sorted(entry) for entry in logprobs]


def mixed_requests() -> list[tuple[list[int], SamplingParams]]:
    params = [
        SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=2),
        SamplingParams(temperature=1.0, seed=11, max_tokens=9, ignore_eos=True, top_k=20, top_p=0.9),
        SamplingParams(
            temperature=0.8,
            seed=5,
            max_tokens=10,
            min_tokens=6,
            presence_penalty=1.5,
            frequency_penalty=0.5,
            repetition_penalty=1.3,
        ),
        SamplingParams(temperature=1.0, seed=9, n=3, max_tokens=7, ignore_eos=True, prompt_logprobs=1),
        # Greedy on this prompt repeats its first token at once unless the penalty sees it in flight.
        SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, presence_penalty=2.0),
    ]
    return list(zip([*PROMPTS, PROMPTS[3]], params, strict=True))


@pytest.mark.parametrize("variant", ["llama", "qwen3"])
def test_async_matches_sync_on_a_mixed_batch(tiny_model_dir, variant):
    model = tiny_model_dir(variant)
    sync = run(make_engine(model, "off"), mixed_requests())
    engine = make_engine(model, "on")
    assert engine.core.async_scheduling
    assert run(engine, mixed_requests()) == sync


def test_async_stops_on_a_sampled_token_without_extra_output(tiny_model_dir):
    model = tiny_model_dir("llama")
    greedy = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    full = run(make_engine(model, "off"), [(PROMPTS[0], greedy)])["r0"][0][0]
    # A stop token first produced at position k, and min_tokens = k: it is banned before k and
    # allowed at k only if min_tokens counts the output token still in flight.
    k = next(i for i in range(3, len(full)) if full[i] not in full[:i])
    stopped = SamplingParams(temperature=0.0, max_tokens=16, stop_token_ids=[full[k]], min_tokens=k)
    text_stop = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, stop=["x"])
    requests = [(PROMPTS[0], stopped), (PROMPTS[1], text_stop), (PROMPTS[2], greedy)]
    sync = run(make_engine(model, "off"), requests)
    result = run(make_engine(model, "on"), requests)
    assert result == sync
    assert result["r0"][0][0] == full[: k + 1] and result["r0"][0][1] == "stop"


def test_async_preemption_and_aborts_match_sync(tiny_model_dir):
    model = tiny_model_dir("llama")
    # 16 blocks of 4 tokens cannot hold these four requests at once: the scheduler preempts.
    requests = mixed_requests()[:3] + [(PROMPTS[3], SamplingParams(temperature=1.0, seed=2, max_tokens=30))]
    aborts = {"r1": 6}
    sync_engine = make_engine(model, "off", num_kv_blocks=16)
    sync = run(sync_engine, requests, aborts)
    assert sync_engine.core.scheduler.num_preemptions > 0
    engine = make_engine(model, "on", num_kv_blocks=16)
    result = run(engine, requests, aborts)
    assert engine.core.scheduler.num_preemptions > 0
    assert result == sync
    assert "r1" not in result and len(result) == 3  # an aborted request reports nothing more


def test_async_scheduling_option_is_validated():
    with pytest.raises(Exception, match="async_scheduling must be auto, on or off"):
        EngineConfig(async_scheduling="sometimes")


def test_a_token_no_step_in_flight_samples_is_an_internal_error(tiny_model_dir):
    from forgellm.engine.request import Request
    from forgellm.scheduling.scheduler_output import ScheduledRequest, SchedulerOutput

    engine = make_engine(tiny_model_dir("llama"), "off", num_kv_blocks=8)
    request = Request("r", [5, 6, 7], SamplingParams(max_tokens=4), 4)
    request.num_pending_tokens = 1  # the scheduler thinks a token is in flight, but nothing is
    step = ScheduledRequest(request, 1, [0], start=3, samples=True)
    with pytest.raises(RuntimeError, match="no step in flight samples"):
        engine.core.runner.launch(SchedulerOutput([step], 1), in_flight=None)
