"""A request aborted while its step is in flight (the model runner already told to forget it) leaves no per-request
state behind when that step's deferred sampling runs: no seeded generator, no prompt-logprob progress. A pipeline
samples its oldest batch after launching the next one, whose launch releases the ended requests."""

from __future__ import annotations

from forgellm import LLM
from forgellm.engine.request import RequestStatus
from forgellm.sampling_params import SamplingParams


def test_a_request_aborted_while_its_step_is_in_flight_leaves_nothing_behind(tiny_model_dir) -> None:
    engine = LLM(str(tiny_model_dir("llama")), dtype="float32", num_kv_blocks=16).engine
    engine.add_request("a", [5, 6, 7], SamplingParams(seed=1, max_tokens=4, prompt_logprobs=1))
    scheduler_output = engine.core.scheduler.schedule()
    runner = engine.core.runner
    step = runner.launch(scheduler_output, defer_sampling=True)
    request_id = scheduler_output.scheduled[0].request.request_id
    engine.core.scheduler.abort_requests([request_id], RequestStatus.FINISHED_ABORTED)
    runner.release({request_id})
    runner.collect(step)  # the deferred sampling and prompt scoring run now
    assert request_id not in runner.generators and request_id not in runner.prompt_logprobs_done
