"""PipelinedEngineCore over the real scheduler and a fake model runner that records what is launched and
collected: batches of disjoint requests in flight together (one per stage), evenly shared, a request never
in two batches at once, the oldest collected first, chunks of one prompt in consecutive batches, and every
request's tokens as a synchronous engine gives them."""

from __future__ import annotations

import pytest

from forgellm.engine.core import EngineCore
from forgellm.engine.pipelined_core import PipelinedEngineCore
from forgellm.scheduling.kv_cache import KVCacheManager
from forgellm.scheduling.scheduler import Scheduler
from forgellm.worker.in_flight import InFlightStep
from forgellm.worker.model_runner import ModelRunnerOutput
from tests.scheduling.test_scheduler import make_request


class FakeRunner:
    """Samples a token that depends on the request and its length, so a token fed twice or skipped shows."""

    def __init__(self) -> None:
        self.events: list[tuple[str, list[str]]] = []
        self.in_flight: set[str] = set()

    def launch(self, scheduler_output, in_flight=None, defer_sampling=False):  # noqa: ANN001, ANN201
        ids = [s.request.request_id for s in scheduler_output.scheduled]
        sampling = {s.request.request_id for s in scheduler_output.scheduled if s.samples}
        assert not sampling & self.in_flight, "a request is in two batches in flight"
        self.in_flight |= sampling
        self.events.append(("launch", ids))
        return InFlightStep(scheduler_output, [])

    def collect(self, step: InFlightStep) -> ModelRunnerOutput:
        scheduler_output = step.scheduler_output
        ids = [s.request.request_id for s in scheduler_output.scheduled]
        self.events.append(("collect", ids))
        out = ModelRunnerOutput()
        for s in scheduler_output.scheduled:
            if s.samples:
                self.in_flight.discard(s.request.request_id)
                out.sampled_token_ids[s.request.request_id] = [100 + s.start + s.num_new_tokens]
        return out

    def release(self, request_ids) -> None:  # noqa: ANN001
        pass


def run(core, requests) -> dict[str, list[int]]:  # noqa: ANN001
    for request in requests:
        core.add_request(request)
    steps = 0
    while core.has_unfinished_requests():
        core.step()
        steps += 1
        assert steps < 500
    return {r.request_id: r.output_token_ids for r in requests}


def make_core(depth: int, max_num_seqs: int = 8, budget: int = 64) -> PipelinedEngineCore:
    kv = KVCacheManager(128, 4)
    scheduler = Scheduler(kv, max_num_seqs, budget, 1024, wait_for_sampled_tokens=True)
    return PipelinedEngineCore(FakeRunner(), scheduler, kv, depth)


def sync_tokens(requests) -> dict[str, list[int]]:  # noqa: ANN001
    kv = KVCacheManager(128, 4)
    return run(EngineCore(FakeRunner(), Scheduler(kv, 8, 64, 1024), kv), requests)


@pytest.mark.parametrize("depth", [2, 3])
def test_batches_of_disjoint_requests_are_in_flight_together_and_collected_oldest_first(depth) -> None:
    core = make_core(depth)
    requests = [make_request(f"r{i}", 5, max_tokens=4) for i in range(6)]
    assert run(core, requests) == sync_tokens([make_request(f"r{i}", 5, max_tokens=4) for i in range(6)])
    assert core.max_steps_in_flight == depth
    events = core.runner.events
    launched = [ids for kind, ids in events if kind == "launch"]
    collected = [ids for kind, ids in events if kind == "collect"]
    assert collected == launched  # oldest first, every batch once
    assert len(launched[0]) == len(launched[1]) == 6 // depth  # the requests shared evenly
    assert not set(launched[0]) & set(launched[1])
    # The first collect comes only once `depth` batches are in flight.
    assert [kind for kind, _ in events[: depth + 1]] == ["launch"] * depth + ["collect"]


def test_a_long_prompt_is_chunked_over_consecutive_batches_and_a_lone_request_still_finishes() -> None:
    core = make_core(2, budget=8)
    long = make_request("long", 30, max_tokens=3)
    assert run(core, [long]) == sync_tokens([make_request("long", 30, max_tokens=3)])
    launched = [ids for kind, ids in core.runner.events if kind == "launch"]
    assert launched[:4] == [["long"]] * 4  # four 8-token chunks of the prompt, back to back in flight


def test_a_pipelined_core_needs_a_scheduler_that_waits_for_sampled_tokens() -> None:
    kv = KVCacheManager(16, 4)
    with pytest.raises(ValueError, match="waits for sampled tokens"):
        PipelinedEngineCore(FakeRunner(), Scheduler(kv, 4, 16, 64), kv, 2)
    with pytest.raises(ValueError, match=">= 2 steps in flight"):
        PipelinedEngineCore(FakeRunner(), Scheduler(kv, 4, 16, 64, wait_for_sampled_tokens=True), kv, 1)
