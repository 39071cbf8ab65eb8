"""A step may emit several tokens per request (speculative verification): the scheduler appends them in
order and drops those after one that ends the request; the output processor detokenizes them one by one,
so a stop string completed by an early token drops the later ones, and logprobs stay one per token."""

from __future__ import annotations

import time

from forgellm.engine.core import EngineCoreOutput
from forgellm.engine.llm_engine import DEMO_MODEL_DIR
from forgellm.engine.output_processor import OutputProcessor
from forgellm.hf.tokenizer import Tokenizer
from forgellm.sampling_params import SamplingParams
from forgellm.worker.model_runner import TokenLogprobs
from tests.scheduling.test_scheduler import make_request, make_scheduler


def run_step(scheduler, tokens: dict[str, list[int]]):
    out = scheduler.schedule()
    return out, scheduler.update_from_output(out, tokens)


def test_scheduler_appends_every_token_of_a_step_in_order():
    scheduler = make_scheduler(budget=64)
    scheduler.add_request(make_request("a", 4, max_tokens=10))
    run_step(scheduler, {"a": [11]})
    _, updated = run_step(scheduler, {"a": [12, 13, 14]})
    (request,) = updated
    assert request.output_token_ids == [11, 12, 13, 14] and not request.is_finished
    # No step computed the K/V of 12, 13, 14 (this step scheduled one token): the next computes all three.
    out = scheduler.schedule()
    assert [(s.request.request_id, s.start, s.num_new_tokens) for s in out.scheduled] == [("a", 5, 3)]


def test_tokens_after_eos_or_the_length_limit_are_dropped():
    eos, length = make_request("eos", 4, max_tokens=10, eos=(99,)), make_request("len", 4, max_tokens=3)
    scheduler = make_scheduler(budget=64)
    scheduler.add_request(eos)
    scheduler.add_request(length)
    run_step(scheduler, {"eos": [5, 99, 6, 7], "len": [1, 2, 3, 4, 5]})
    assert eos.output_token_ids == [5, 99] and eos.status.finish_reason == "stop"
    assert length.output_token_ids == [1, 2, 3] and length.status.finish_reason == "length"
    assert scheduler.num_running == 0 and scheduler.kv_cache_manager.num_free_blocks == 64


def test_output_processor_stops_at_the_first_stop_string_and_keeps_one_logprob_per_token():
    tokenizer = Tokenizer.from_dir(DEMO_MODEL_DIR)
    processor = OutputProcessor(tokenizer)
    words = [tokenizer.encode(w, add_special_tokens=False) for w in ("alpha", " beta", " gamma", " delta")]
    tokens = [t for w in words for t in w]
    params = SamplingParams(max_tokens=20, stop=[" gamma"], logprobs=0)
    processor.add_request("r", None, [1, 2], params, ["r-0"], time.monotonic())
    logprobs = [TokenLogprobs([t], [-0.5], 1) for t in tokens]
    result = processor.process([EngineCoreOutput("r-0", tokens, logprobs=logprobs)])
    assert result.stopped == ["r-0"]
    (output,) = result.outputs
    sample = output.outputs[0]
    kept = len(words[0]) + len(words[1]) + len(words[2])  # up to the token that completes " gamma"
    assert sample.text == "alpha beta" and sample.token_ids == tokens[:kept]
    assert len(sample.logprobs) == kept and sample.cumulative_logprob == -0.5 * kept
