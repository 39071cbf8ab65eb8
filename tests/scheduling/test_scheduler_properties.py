"""Property tests: the Scheduler + KVCacheManager driven by random workloads and a fake model.

Every step checks the budget, the seat cap and the block accounting; a simulated KV cache checks that
every computed position of every running request holds that request's token (so prefix sharing and
eviction never hand out wrong K/V). At the end nothing may be left running or leaked.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forgellm.engine.request import Request, RequestStatus
from forgellm.sampling_params import SamplingParams
from forgellm.scheduling.kv_cache import KVCacheManager
from forgellm.scheduling.scheduler import Scheduler
from forgellm.scheduling.scheduler_output import SchedulerOutput

EOS = 0
STOP_TOKEN = 1
VOCAB = 12
# Shared prompt prefixes, so the prefix cache gets hits.
FAMILIES = [[(f * 37 + i * 7) % 90 + 10 for i in range(64)] for f in range(3)]
MAX_STEPS = 20_000


@dataclass
class Config:
    block_size: int
    num_blocks: int
    max_num_seqs: int
    budget: int
    max_model_len: int
    chunked: bool
    caching: bool
    policy: str
    reset_step: int | None  # when to drop the whole prefix cache, mid-run


@dataclass
class Spec:
    arrival_step: int
    prompt: list[int]
    max_tokens: int
    min_tokens: int
    priority: int
    num_samples: int
    abort_step: int | None
    abort_in_flight: bool
    ignore_eos: bool
    stop_token: bool
    prompt_logprobs: bool


@st.composite
def configs(draw: st.DrawFn) -> Config:
    return Config(
        block_size=draw(st.sampled_from([1, 2, 4, 8])),
        num_blocks=draw(st.integers(2, 24)),
        max_num_seqs=draw(st.integers(1, 6)),
        budget=draw(st.integers(1, 40)),
        max_model_len=draw(st.integers(2, 64)),
        chunked=draw(st.booleans()),
        caching=draw(st.booleans()),
        policy=draw(st.sampled_from(["fcfs", "priority"])),
        reset_step=draw(st.one_of(st.none(), st.integers(0, 30))),
    )


@st.composite
def specs(draw: st.DrawFn, config: Config) -> Spec:
    capacity = config.num_blocks * config.block_size
    longest = min(config.max_model_len - 1, capacity, 32)
    if not config.chunked:
        longest = min(longest, config.budget)
    length = draw(st.integers(1, longest))
    family = FAMILIES[draw(st.integers(0, len(FAMILIES) - 1))]
    shared = draw(st.integers(0, length))
    tail = draw(st.lists(st.integers(2, VOCAB + 20), min_size=length - shared, max_size=length - shared))
    # Every request must fit the whole cache alone: prompt + max_tokens - 1 K/V slots.
    max_tokens = draw(st.integers(1, max(1, min(capacity + 1 - length, 16))))
    abort_step = draw(st.one_of(st.none(), st.integers(0, 40)))
    return Spec(
        arrival_step=draw(st.integers(0, 20)),
        prompt=family[:shared] + tail,
        max_tokens=max_tokens,
        min_tokens=draw(st.integers(0, max_tokens)),
        priority=draw(st.integers(0, 3)),
        num_samples=draw(st.integers(1, 3)),
        abort_step=abort_step,
        abort_in_flight=draw(st.booleans()),
        ignore_eos=draw(st.booleans()),
        stop_token=draw(st.booleans()),
        prompt_logprobs=draw(st.integers(0, 5)) == 0,
    )


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Config, list[Spec], int]:
    config = draw(configs())
    return config, draw(st.lists(specs(config), min_size=1, max_size=10)), draw(st.integers(0, 2**32 - 1))


def make_requests(index: int, spec: Spec) -> list[Request]:
    """The Requests of one user request: `num_samples` siblings sharing the prompt."""
    params = SamplingParams(
        max_tokens=spec.max_tokens,
        min_tokens=spec.min_tokens,
        ignore_eos=spec.ignore_eos,
        stop_token_ids=[STOP_TOKEN] if spec.stop_token else None,
        prompt_logprobs=1 if spec.prompt_logprobs else None,
    )
    requests: list[Request] = []
    for sample in range(spec.num_samples):
        requests.append(
            Request(
                f"{index}-{sample}",
                list(spec.prompt),
                params,
                spec.max_tokens,
                eos_token_ids=frozenset([EOS]),
                arrival_time=spec.arrival_step + index * 1e-3,
                priority=spec.priority,
                wait_for=requests[0] if sample else None,
                sample_index=sample,
            )
        )
    return requests


def check_step(scheduler: Scheduler, config: Config, out: SchedulerOutput | None) -> None:
    """Budget, seats, and block accounting: ref counts equal the number of live tables holding a block."""
    kv = scheduler.kv_cache_manager
    if out is not None:
        assert sum(item.num_new_tokens for item in out.scheduled) == out.num_batched_tokens
        assert out.num_batched_tokens <= config.budget
        assert len({id(item.request) for item in out.scheduled}) == len(out.scheduled)
        for item in out.scheduled:
            assert item.num_new_tokens >= 1
            assert item.start + item.num_new_tokens <= item.request.num_tokens + item.request.num_pending_tokens
            assert len(item.block_ids) * config.block_size >= item.start + item.num_new_tokens
    assert scheduler.num_running <= config.max_num_seqs
    expected: Counter[int] = Counter()
    for request in scheduler.running:
        assert request.status == RequestStatus.RUNNING
        table = kv.get_block_ids(request.request_id)
        assert len(set(table)) == len(table)
        assert len(table) * config.block_size >= request.num_computed_tokens
        expected.update(table)
    for request in scheduler.waiting:
        assert request.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED)
        assert kv.get_block_ids(request.request_id) == [] and request.num_computed_tokens == 0
    refs = [kv.pool.ref_count(block) for block in range(config.num_blocks)]
    assert all(count >= 0 for count in refs)
    assert {block: count for block, count in enumerate(refs) if count} == dict(expected)
    assert kv.num_free_blocks == config.num_blocks - len(expected)


def check_kv_contents(scheduler: Scheduler, slots: dict[tuple[int, int], int], block_size: int) -> None:
    """Every computed position of a running request holds its token in the simulated cache."""
    for request in scheduler.running:
        table = scheduler.kv_cache_manager.get_block_ids(request.request_id)
        for position in range(min(request.num_computed_tokens, request.num_tokens)):
            slot = (table[position // block_size], position % block_size)
            assert slots.get(slot) == request.all_token_ids[position], (request.request_id, position)


def check_finished(request: Request, max_model_len: int) -> None:
    """The finish status matches the tokens."""
    assert request.is_finished
    if request.status == RequestStatus.FINISHED_ABORTED:
        return
    last = request.all_token_ids[-1]
    assert 1 <= request.num_output_tokens <= request.max_tokens and request.num_tokens <= max_model_len
    if request.status == RequestStatus.FINISHED_LENGTH:
        assert request.num_output_tokens == request.max_tokens or request.num_tokens == max_model_len
    else:
        assert request.status == RequestStatus.FINISHED_STOPPED
        assert request.num_output_tokens >= request.sampling_params.min_tokens
        assert (last == EOS and request.stop_reason is None) or request.stop_reason == last == STOP_TOKEN


@pytest.mark.parametrize("lagged", [False, True], ids=["sync", "async"])
@settings(max_examples=250, deadline=None)
@given(scenario=scenarios())
def test_random_workloads_keep_invariants_and_leak_nothing(
    lagged: bool, scenario: tuple[Config, list[Spec], int]
) -> None:
    """lagged: schedule step N+1 before step N's tokens are applied, as asynchronous scheduling does."""
    config, spec_list, seed = scenario
    rng = random.Random(seed)
    kv = KVCacheManager(config.num_blocks, config.block_size, config.caching)
    scheduler = Scheduler(kv, config.max_num_seqs, config.budget, config.max_model_len, config.chunked, config.policy)
    groups = [make_requests(index, spec) for index, spec in enumerate(spec_list)]
    all_requests = [request for group in groups for request in group]
    slots: dict[tuple[int, int], int] = {}
    reported: Counter[str] = Counter()
    step = 0
    pending_step: tuple[SchedulerOutput, dict[str, int]] | None = None  # launched, tokens not yet applied
    while step <= 20 or scheduler.has_unfinished_requests() or pending_step is not None:
        assert step < MAX_STEPS, "the scheduler stopped making progress"
        for spec, group in zip(spec_list, groups, strict=True):
            if spec.arrival_step == step:
                for request in group:
                    scheduler.add_request(request)
        to_abort = [
            (spec.abort_in_flight, [r.request_id for r in group])
            for spec, group in zip(spec_list, groups, strict=True)
            if spec.abort_step == step and spec.arrival_step <= step
        ]
        for in_flight, ids in to_abort:
            if not in_flight:
                scheduler.abort_requests(ids)
        if step == config.reset_step:
            kv.reset_prefix_cache()
        out = scheduler.schedule()
        reported.update(out.finished_request_ids)
        check_step(scheduler, config, out)
        in_flight_tokens = pending_step[1] if pending_step is not None else {}
        for item in out.scheduled:  # the fake model writes each new token's K/V into its slot
            request = item.request
            for position in range(item.start, item.start + item.num_new_tokens):
                block = item.block_ids[position // config.block_size]
                # A token past the host's list was sampled by the step in flight (a placeholder).
                known = position < request.num_tokens
                token = request.all_token_ids[position] if known else in_flight_tokens[request.request_id][0]
                slots[(block, position % config.block_size)] = token
        for in_flight, ids in to_abort:
            if in_flight:
                scheduler.abort_requests(ids)
        sampled = {item.request.request_id: [rng.randrange(VOCAB)] for item in out.scheduled if item.samples}
        done = (out, sampled) if out.scheduled else None  # an empty schedule launches nothing
        if lagged:
            done, pending_step = pending_step, done
        if done is not None:
            updated = scheduler.update_from_output(*done)
            assert all(request.request_id in done[1] for request in updated)
        check_step(scheduler, config, None)
        check_kv_contents(scheduler, slots, config.block_size)
        step += 1
    reported.update(scheduler.schedule().finished_request_ids)
    for request in all_requests:
        check_finished(request, config.max_model_len)
    assert reported == Counter(request.request_id for request in all_requests)
    assert kv.num_free_blocks == config.num_blocks and kv.usage == 0.0
    assert all(kv.pool.ref_count(block) == 0 for block in range(config.num_blocks))
