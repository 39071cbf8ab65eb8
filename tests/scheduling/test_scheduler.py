"""Unit tests of the Scheduler: batching under budget, seats, preemption, aborts, stop conditions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from forgellm.engine.request import Request, RequestStatus
from forgellm.sampling_params import SamplingParams
from forgellm.scheduling.kv_cache import KVCacheManager
from forgellm.scheduling.scheduler import Scheduler
from forgellm.scheduling.scheduler_output import SchedulerOutput


def make_scheduler(
    num_blocks: int = 64,
    block_size: int = 4,
    max_num_seqs: int = 8,
    budget: int = 64,
    max_model_len: int = 1024,
    chunked: bool = True,
    policy: str = "fcfs",
) -> Scheduler:
    kv = KVCacheManager(num_blocks, block_size)
    return Scheduler(kv, max_num_seqs, budget, max_model_len, chunked, policy)


def make_request(
    request_id: str,
    prompt: int | list[int],
    max_tokens: int = 16,
    eos: tuple[int, ...] = (),
    priority: int = 0,
    arrival_time: float = 0.0,
    **params,
) -> Request:
    # Distinct ids get distinct prompts, so the prefix cache only shares what a test means to share.
    base = 1000 * sum(map(ord, request_id))
    prompt_ids = list(range(base, base + prompt)) if isinstance(prompt, int) else prompt
    return Request(
        request_id,
        prompt_ids,
        SamplingParams(max_tokens=max_tokens, **params),
        max_tokens,
        eos_token_ids=frozenset(eos),
        priority=priority,
        arrival_time=arrival_time,
    )


@dataclass
class Step:
    out: SchedulerOutput
    updated: list[Request]
    starts: list[int]  # ScheduledRequest.start as the model runner saw it


def step(scheduler: Scheduler, token: int | Callable[[Request], int] = 7) -> Step:
    """One engine step with a fake model that samples `token` for every request that samples."""
    out = scheduler.schedule()
    starts = [item.start for item in out.scheduled]
    pick = token if callable(token) else (lambda _request: token)
    sampled = {item.request.request_id: [pick(item.request)] for item in out.scheduled if item.samples}
    return Step(out, scheduler.update_from_output(out, sampled), starts)


def shares(out: SchedulerOutput) -> list[tuple[str, int]]:
    return [(item.request.request_id, item.num_new_tokens) for item in out.scheduled]


def test_chunked_prefill_mixes_decodes_and_chunks_under_budget():
    scheduler = make_scheduler(budget=10)
    scheduler.add_request(make_request("a", 4))
    scheduler.add_request(make_request("b", 20))
    result = step(scheduler)
    assert shares(result.out) == [("a", 4), ("b", 6)] and result.out.num_batched_tokens == 10
    assert [r.request_id for r in result.updated] == ["a"]
    result = step(scheduler)
    assert shares(result.out) == [("a", 1), ("b", 9)] and result.starts == [4, 6]
    assert not result.out.scheduled[1].samples
    result = step(scheduler)
    assert shares(result.out) == [("a", 1), ("b", 5)]
    assert [r.request_id for r in result.updated] == ["a", "b"]
    result = step(scheduler)
    assert shares(result.out) == [("a", 1), ("b", 1)]
    assert result.out.scheduled[0].block_ids == scheduler.kv_cache_manager.get_block_ids("a")


def test_max_num_seqs_caps_running_requests():
    scheduler = make_scheduler(max_num_seqs=2)
    for request_id, max_tokens in (("a", 1), ("b", 5), ("c", 5)):
        scheduler.add_request(make_request(request_id, 4, max_tokens=max_tokens))
    result = step(scheduler)
    assert [rid for rid, _ in shares(result.out)] == ["a", "b"]
    assert scheduler.num_running == 1 and scheduler.num_waiting == 1  # a finished (max_tokens=1)
    result = step(scheduler)
    assert shares(result.out) == [("b", 1), ("c", 4)]
    assert result.out.finished_request_ids == {"a"}


def test_chunked_prefill_disabled_waits_for_room():
    # (Prompts longer than the budget are refused at admission: tests/engine/test_admission.py.)
    scheduler = make_scheduler(budget=10, chunked=False)
    scheduler.add_request(make_request("a", 4))
    scheduler.add_request(make_request("b", 8))
    assert shares(step(scheduler).out) == [("a", 4)]  # b does not fit the 6 tokens left: not split
    assert shares(step(scheduler).out) == [("a", 1), ("b", 8)]


def test_an_engine_id_queued_twice_is_a_bug_not_a_user_error():
    # Callers never choose engine ids (LLMEngine numbers them), so a duplicate means a bug.
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 4))
    with pytest.raises(RuntimeError, match="already queued"):
        scheduler.add_request(make_request("a", 4))
    assert scheduler.num_waiting == 1


def test_fcfs_preempts_the_newest_request_which_recomputes_later():
    scheduler = make_scheduler(num_blocks=4, block_size=2)
    a = make_request("a", [1, 2, 3, 4], max_tokens=3)
    b = make_request("b", [5, 6, 7], max_tokens=3)
    scheduler.add_request(a)
    scheduler.add_request(b)
    assert shares(step(scheduler, token=9).out) == [("a", 4), ("b", 3)]
    assert scheduler.kv_cache_manager.num_free_blocks == 0
    result = step(scheduler, token=9)  # a needs a third block: b, the newest, makes room
    assert shares(result.out) == [("a", 1)] and scheduler.num_preemptions == 1
    assert b.status == RequestStatus.PREEMPTED and b.num_preemptions == 1 and b.num_computed_tokens == 0
    assert scheduler.kv_cache_manager.get_block_ids("b") == [] and list(scheduler.waiting) == [b]
    step(scheduler, token=9)
    assert a.is_finished
    result = step(scheduler, token=8)  # b recomputes prompt + output, reusing its cached first block
    assert shares(result.out) == [("b", 2)] and result.starts == [2] and result.updated == [b]
    assert b.all_token_ids == [5, 6, 7, 9, 8] and b.num_cached_tokens == 0


def _priority_scenario(policy: str) -> tuple[Scheduler, Request, Request, Step]:
    scheduler = make_scheduler(num_blocks=4, block_size=2, policy=policy)
    low = make_request("low", [1, 2], max_tokens=4, priority=5, arrival_time=0.0)
    high = make_request("high", [3, 4, 5, 6], max_tokens=3, priority=0, arrival_time=1.0)
    scheduler.add_request(low)
    step(scheduler)
    scheduler.add_request(high)
    step(scheduler)  # low holds 2 blocks, high 2: the cache is full
    return scheduler, low, high, step(scheduler)  # low fits its blocks; high needs a third one


def test_priority_preempts_least_important_even_if_already_scheduled():
    scheduler, low, high, result = _priority_scenario("priority")
    assert shares(result.out) == [("high", 1)] and result.out.num_batched_tokens == 1
    assert low.status == RequestStatus.PREEMPTED and high.status == RequestStatus.RUNNING
    while not high.is_finished:
        step(scheduler)
    result = step(scheduler)  # prompt + 2 outputs recomputed, the first block from the prefix cache
    assert shares(result.out) == [("low", 2)] and result.starts == [2] and result.updated == [low]
    assert low.num_output_tokens == 3


def test_fcfs_preempts_the_request_being_scheduled_when_it_is_the_newest():
    _, low, high, result = _priority_scenario("fcfs")
    assert shares(result.out) == [("low", 1)]
    assert high.status == RequestStatus.PREEMPTED and low.status == RequestStatus.RUNNING


def test_priority_policy_admits_by_priority_then_arrival():
    scheduler = make_scheduler(max_num_seqs=2, policy="priority")
    scheduler.add_request(make_request("late", 4, priority=1, arrival_time=0.0))
    scheduler.add_request(make_request("urgent", 4, priority=0, arrival_time=2.0))
    scheduler.add_request(make_request("early", 4, priority=1, arrival_time=-1.0))
    assert [rid for rid, _ in shares(step(scheduler).out)] == ["urgent", "early"]


def test_abort_waiting_and_running_frees_blocks():
    scheduler = make_scheduler(num_blocks=16, max_num_seqs=1)
    scheduler.add_request(make_request("run", 10))
    scheduler.add_request(make_request("wait", 10))
    step(scheduler)
    kv = scheduler.kv_cache_manager
    assert kv.num_free_blocks == 13
    aborted = scheduler.abort_requests(["run", "wait", "unknown"])
    assert [r.request_id for r in aborted] == ["run", "wait"]
    assert all(r.status == RequestStatus.FINISHED_ABORTED for r in aborted)
    assert kv.num_free_blocks == 16 and not scheduler.has_unfinished_requests()
    out = scheduler.schedule()
    assert out.is_empty and out.finished_request_ids == {"run", "wait"}
    assert scheduler.schedule().finished_request_ids == set()


def test_request_aborted_during_a_step_is_skipped_by_update():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 4))
    out = scheduler.schedule()
    scheduler.abort_requests(["a"], status=RequestStatus.FINISHED_STOPPED)
    assert scheduler.update_from_output(out, {"a": [1]}) == []
    assert scheduler.get_request("a") is None and scheduler.kv_cache_manager.num_free_blocks == 64


def run_to_end(scheduler: Scheduler, request: Request, tokens: list[int]) -> None:
    scheduler.add_request(request)
    feed = iter(tokens)
    while not request.is_finished:
        step(scheduler, token=lambda _r: next(feed))


def test_eos_stops_with_no_stop_reason():
    request = make_request("a", 4, eos=(2,))
    run_to_end(make_scheduler(), request, [5, 2, 6])
    assert request.output_token_ids == [5, 2]
    assert request.status == RequestStatus.FINISHED_STOPPED and request.stop_reason is None


def test_ignore_eos_and_min_tokens_delay_the_stop():
    ignoring = make_request("a", 4, max_tokens=3, eos=(2,), ignore_eos=True)
    run_to_end(make_scheduler(), ignoring, [2, 2, 2])
    assert ignoring.status == RequestStatus.FINISHED_LENGTH
    delayed = make_request("b", 4, eos=(2,), stop_token_ids=[3], min_tokens=3)
    run_to_end(make_scheduler(), delayed, [2, 3, 2, 9])
    assert delayed.output_token_ids == [2, 3, 2] and delayed.status == RequestStatus.FINISHED_STOPPED


def test_stop_token_id_sets_stop_reason():
    request = make_request("a", 4, eos=(2,), stop_token_ids=[3, 4])
    run_to_end(make_scheduler(), request, [5, 4, 9])
    assert request.status == RequestStatus.FINISHED_STOPPED and request.stop_reason == 4


def test_max_tokens_and_max_model_len_end_with_length():
    request = make_request("a", 4, max_tokens=3)
    run_to_end(make_scheduler(), request, [5, 5, 5, 5])
    assert request.num_output_tokens == 3 and request.status == RequestStatus.FINISHED_LENGTH
    capped = make_request("b", 4, max_tokens=100)
    run_to_end(make_scheduler(max_model_len=6), capped, [5] * 10)
    assert capped.num_tokens == 6 and capped.status == RequestStatus.FINISHED_LENGTH


def test_wait_for_sibling_shares_the_prompt_through_the_prefix_cache():
    scheduler = make_scheduler(block_size=4)
    prompt = list(range(8))
    first, second = make_request("s0", prompt), make_request("s1", prompt)
    second.wait_for = first
    other = make_request("other", 3)
    for request in (first, second, other):
        scheduler.add_request(request)
    assert shares(step(scheduler).out) == [("s0", 8), ("other", 3)]  # s1 skipped, not blocking
    result = step(scheduler)
    assert shares(result.out) == [("s0", 1), ("other", 1), ("s1", 4)] and result.starts[2] == 4
    assert second.num_cached_tokens == 4
    kv = scheduler.kv_cache_manager
    assert kv.get_block_ids("s1")[0] == kv.get_block_ids("s0")[0]
    assert kv.prefix_cache_hit_rate > 0


def test_lookahead_slots_are_held_past_each_step_when_blocks_allow():
    kv = KVCacheManager(6, 4)
    scheduler = Scheduler(kv, 8, 64, 1024, True, "fcfs", num_lookahead_tokens=3)
    request = make_request("a", 7)
    scheduler.add_request(request)
    step(scheduler)  # 7 prompt tokens + 3 lookahead: 10 slots, 3 blocks
    assert len(kv.get_block_ids("a")) == 3
    step(scheduler)  # the 8th token + 3: 11 slots, still 3 blocks
    assert len(kv.get_block_ids("a")) == 3
    # A second request takes the remaining blocks; lookahead never preempts anyone for itself.
    other = make_request("b", 11)
    scheduler.add_request(other)
    step(scheduler)
    assert other.status is RequestStatus.RUNNING and scheduler.num_preemptions == 0
    assert len(kv.get_block_ids("b")) == 3 and kv.num_free_blocks == 0


def test_lookahead_stops_at_the_context_length():
    kv = KVCacheManager(16, 4)
    scheduler = Scheduler(kv, 8, 64, 9, True, "fcfs", num_lookahead_tokens=8)
    scheduler.add_request(make_request("a", 7, max_tokens=2))
    step(scheduler)
    assert len(kv.get_block_ids("a")) == 3  # 9 slots (the context), not 7 + 8
