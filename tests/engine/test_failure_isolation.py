"""An exception while serving fails the requests it concerns; the engine, and everyone else, go on."""

from __future__ import annotations

import pytest

from forgellm import LLM, SamplingParams
from forgellm.engine.core import is_device_failure

POISON = [9, 9, 9, 9, 9, 3001]  # a prompt the planted faults below recognise
LONG = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


@pytest.fixture(params=["off", "on"], ids=["sync", "async"])
def llm(request, tiny_model_dir) -> LLM:
    # One seat: a request waiting behind the faulty one is never in the step that fails.
    return LLM(
        str(tiny_model_dir("llama")),
        dtype="float32",
        block_size=4,
        max_num_seqs=1,
        async_scheduling=request.param,
    )


def plant_step_fault(llm: LLM, monkeypatch, error: Exception, poison: list[int] = POISON, at_step: int = 1) -> None:
    """Make the `at_step`-th step that runs the `poison` prompt raise `error`."""
    runner = llm.engine.core.runner
    launch = runner.launch
    seen = []

    def launch_with_fault(scheduler_output, in_flight=None, **options):  # noqa: ANN001, ANN003, ANN202
        if any(s.request.prompt_token_ids == poison for s in scheduler_output.scheduled):
            seen.append(1)
            if len(seen) == at_step:
                raise error
        return launch(scheduler_output, in_flight, **options)

    monkeypatch.setattr(runner, "launch", launch_with_fault)


def assert_clean(llm: LLM) -> None:
    kv = llm.engine.core.kv_cache
    assert kv.num_free_blocks == kv.num_blocks and not llm.engine.has_unfinished_requests()
    runner = llm.engine.core.runner
    assert not runner.generators and not runner.prompt_logprobs_done


def test_a_failing_step_fails_its_requests_and_the_rest_run(llm, monkeypatch):
    expected = llm.generate([[5, 6, 7]], LONG, use_tqdm=False)[0].outputs[0].token_ids
    plant_step_fault(llm, monkeypatch, RuntimeError("boom in a step"))
    seeded = SamplingParams(temperature=1.0, seed=5, max_tokens=12, ignore_eos=True)
    bad, good = llm.generate([POISON, [5, 6, 7]], [seeded, LONG], use_tqdm=False)
    assert bad.finished and bad.outputs[0].finish_reason == "error"
    assert "RuntimeError: boom in a step" in bad.error
    assert good.error is None and good.outputs[0].token_ids == expected
    stats = llm.engine.stats()
    assert stats.num_failed == 1
    llm.engine.step()  # the next schedule hands the failed request to the runner to forget
    assert_clean(llm)


def test_a_step_that_fails_when_collected_fails_its_requests(llm, monkeypatch):
    runner = llm.engine.core.runner
    collect = runner.collect

    def collect_with_fault(step):  # noqa: ANN001, ANN202
        if any(s.request.prompt_token_ids == POISON for s in step.scheduler_output.scheduled):
            raise ValueError("boom reading a step")
        return collect(step)

    monkeypatch.setattr(runner, "collect", collect_with_fault)
    bad, good = llm.generate([POISON, [5, 6, 7]], LONG, use_tqdm=False)
    assert bad.outputs[0].finish_reason == "error" and "ValueError: boom reading a step" in bad.error
    assert good.outputs[0].finish_reason == "length" and len(good.outputs[0].token_ids) == 12
    llm.engine.step()
    assert_clean(llm)


def test_a_failed_requests_blocks_leave_the_prefix_cache(llm, monkeypatch):
    # The failed step may not have written the K/V its blocks were registered for. Failing in the
    # third step, the prompt's six full blocks are registered already (they stay cached otherwise).
    prompt = [*POISON, *range(20, 38)]
    plant_step_fault(llm, monkeypatch, RuntimeError("boom"), poison=prompt, at_step=3)
    [out] = llm.generate([prompt], LONG, use_tqdm=False)
    assert out.outputs[0].finish_reason == "error" and len(out.outputs[0].token_ids) >= 1
    assert llm.engine.core.kv_cache.pool.num_cached_blocks == 0


def test_a_device_failure_is_fatal(llm, monkeypatch):
    error = RuntimeError("CUDA error: an illegal memory access was encountered")
    assert is_device_failure(error) and not is_device_failure(RuntimeError("CUDA out of memory"))
    plant_step_fault(llm, monkeypatch, error)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        llm.generate([POISON], LONG, use_tqdm=False)


def test_an_output_that_cannot_be_processed_fails_its_request_alone(llm, monkeypatch):
    processor = llm.engine.output_processor
    append = processor._append_tokens

    def append_with_fault(sample, out, min_tokens):  # noqa: ANN001, ANN202
        state, _ = processor.sample_owner[out.request_id]
        if state.prompt_token_ids == POISON:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "planted")
        return append(sample, out, min_tokens)

    monkeypatch.setattr(processor, "_append_tokens", append_with_fault)
    bad, good = llm.generate([POISON, [5, 6, 7]], LONG, use_tqdm=False)
    assert bad.outputs[0].finish_reason == "error" and "planted" in bad.error
    assert len(good.outputs[0].token_ids) == 12 and good.outputs[0].finish_reason == "length"
    assert llm.engine.stats().num_failed == 1
    llm.engine.step()
    assert_clean(llm)


def test_caller_ids_never_reach_another_requests_samples(tiny_model_dir):
    # Sample ids were "{id}#{i}": a request "a#0" took over sample 0 of "a" (which then never ended).
    llm = LLM(str(tiny_model_dir("llama")), dtype="float32", block_size=4)
    engine = llm.engine
    engine.add_request("a", [5, 6, 7], SamplingParams(temperature=1.0, seed=1, n=2, max_tokens=6, ignore_eos=True))
    engine.add_request("a#0", [8, 9], LONG)
    engine.abort_request("a#0")
    finals = {}
    while engine.has_unfinished_requests():
        finals.update({out.request_id: out for out in engine.step() if out.finished})
    assert [c.finish_reason for c in finals["a"].outputs] == ["length", "length"]
    assert [len(c.token_ids) for c in finals["a"].outputs] == [6, 6]
    assert "a#0" not in finals  # aborted: its final output came from abort_request


def test_abort_returns_the_final_output(tiny_model_dir):
    llm = LLM(str(tiny_model_dir("llama")), dtype="float32", block_size=4)
    engine = llm.engine
    engine.add_request(
        "r", [5, 6, 7], SamplingParams(temperature=0.0, n=2, max_tokens=50, ignore_eos=True), stream=True
    )
    progress = [0, 0]
    while min(progress) < 2:  # both samples are under way (the second waits for the first's prompt)
        for out in engine.step():
            progress = [len(c.token_ids) for c in out.outputs]
    final = engine.abort_request("r")
    assert final.finished and [c.finish_reason for c in final.outputs] == ["abort", "abort"]
    assert all(len(c.token_ids) >= 1 for c in final.outputs)
    assert engine.abort_request("r") is None  # gone
    assert engine.stats().num_aborted == 2
