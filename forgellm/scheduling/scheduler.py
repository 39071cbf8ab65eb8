"""Scheduler: in-flight batching under a token budget, chunked prefill, and preemption by recompute."""

from __future__ import annotations

from collections.abc import Iterable

from forgellm.engine.request import Request, RequestStatus
from forgellm.errors import ConfigError
from forgellm.scheduling.kv_cache import KVCacheManager
from forgellm.scheduling.request_queue import make_request_queue
from forgellm.scheduling.scheduler_output import ScheduledRequest, SchedulerOutput
from forgellm.scheduling.stop_checker import check_stop, reaches_length

_RUNNING = RequestStatus.RUNNING


class Scheduler:
    """Decides, each step, which requests run and how many new tokens each one computes.

    Running requests go first, in admission order: one token per decoding request, a chunk per
    prefilling one. When KV blocks run out the newest request (fcfs) or the least important one
    (priority) is preempted and recomputed later. Waiting requests are then admitted while the
    budget, the seats and the blocks last. With chunked prefill off a prompt must fit the budget
    whole; admission rejects prompts longer than `max_num_batched_tokens` (only a recompute after
    preemption, which is internal, may still be split).
    """

    def __init__(
        self,
        kv_cache_manager: KVCacheManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        enable_chunked_prefill: bool = True,
        policy: str = "fcfs",
        num_lookahead_tokens: int = 0,
        wait_for_sampled_tokens: bool = False,
    ) -> None:
        """`num_lookahead_tokens`: slots to hold past each scheduled request's new tokens when blocks allow
        (an EAGLE-3 head writes its guesses' K/V there between steps). `wait_for_sampled_tokens`: a request
        whose sampled token is still in flight sits out until it arrives, instead of computing it from the
        device (a pipeline's first stage cannot read a token its last stage has not produced)."""
        for name, value in (
            ("max_num_seqs", max_num_seqs),
            ("max_num_batched_tokens", max_num_batched_tokens),
            ("max_model_len", max_model_len),
        ):
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        self.kv_cache_manager = kv_cache_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.enable_chunked_prefill = enable_chunked_prefill
        self.policy = policy
        self.num_lookahead_tokens = num_lookahead_tokens
        self.wait_for_sampled_tokens = wait_for_sampled_tokens
        self.waiting = make_request_queue(policy)
        self.running: list[Request] = []
        self._requests: dict[str, Request] = {}
        # Ended since the last schedule(); handed to the model runner so it drops their state.
        self._finished_ids: set[str] = set()
        # Since start, for stats: preemptions, and sequences aborted or failed by an engine error.
        self.num_preemptions = 0
        self.num_aborted = 0
        self.num_failed = 0

    @property
    def num_running(self) -> int:
        """Requests holding KV blocks and scheduled step after step."""
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        """Requests queued for admission (new or preempted)."""
        return len(self.waiting)

    def has_unfinished_requests(self) -> bool:
        """True while any request is waiting or running."""
        return bool(self._requests)

    def get_request(self, request_id: str) -> Request | None:
        """The live (waiting or running) request with this id, or None."""
        return self._requests.get(request_id)

    def add_request(self, request: Request) -> None:
        """Queue a request that passed admission (`RequestLimits.check`, engine/admission.py)."""
        if request.request_id in self._requests:  # engine ids are unique by construction
            raise RuntimeError(f"engine request id {request.request_id!r} is already queued")
        request.status = RequestStatus.WAITING
        self._requests[request.request_id] = request
        self.waiting.add(request)

    def abort_requests(
        self, request_ids: Iterable[str], status: RequestStatus = RequestStatus.FINISHED_ABORTED
    ) -> list[Request]:
        """End waiting or running requests with `status` and free their blocks; unknown ids are ignored."""
        if not status.is_finished:
            raise ValueError(f"abort status must be a finished status, got {status!r}")
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        ended = []
        for request_id in request_ids:
            request = self._requests.get(request_id)
            if request is None:
                continue
            if request.status is not _RUNNING:
                self.waiting.remove(request)
            request.status = status
            self._finish(request)
            ended.append(request)
        self.num_aborted += sum(r.status is RequestStatus.FINISHED_ABORTED for r in ended)
        self.num_failed += sum(r.status is RequestStatus.FINISHED_ERROR for r in ended)
        if ended:
            self.running = [r for r in self.running if r.status is _RUNNING]
        return ended

    def schedule(self, max_requests: int | None = None) -> SchedulerOutput:
        """Pick this step's batch: running requests first, then newly admitted ones; at most `max_requests` of
        them (a pipeline shares its requests among the batches in flight)."""
        scheduled: list[ScheduledRequest] = []
        seats = self.max_num_seqs if max_requests is None else max_requests
        budget, preempted = self._schedule_running(scheduled, self.max_num_batched_tokens, seats)
        if not preempted:
            budget = self._schedule_waiting(scheduled, budget, seats)
        finished_ids, self._finished_ids = self._finished_ids, set()
        return SchedulerOutput(
            scheduled=scheduled,
            num_batched_tokens=self.max_num_batched_tokens - budget,
            finished_request_ids=finished_ids,
        )

    def update_from_output(
        self, scheduler_output: SchedulerOutput, sampled_token_ids: dict[str, list[int]]
    ) -> list[Request]:
        """Append the tokens a step sampled, cache newly full blocks, end the finished requests.

        A step emits one or more tokens per sampling request (several when it verifies a speculation);
        tokens after one that ends the request (EOS, a stop token, the length limit) are dropped. Called
        once the step's sampled ids are on the host, possibly after later steps were scheduled. Returns
        the requests that got new tokens, finished ones included.
        """
        kv = self.kv_cache_manager
        max_model_len = self.max_model_len
        updated = []
        any_finished = False
        for item in scheduler_output.scheduled:
            request = item.request
            status = request.status
            if status.is_finished:  # aborted or stopped while the step ran
                continue
            if status is _RUNNING:
                # Blocks being computed by a step still in flight may be registered already: any
                # step that reads them through the prefix cache runs after it on the same stream.
                kv.cache_full_blocks(request, min(request.num_computed_tokens, request.num_tokens))
            if not item.samples:
                continue
            token_ids = sampled_token_ids.get(request.request_id)
            if not token_ids:
                continue
            request.num_pending_tokens -= 1
            updated.append(request)
            if item.spec_token_ids and status is _RUNNING:
                # Rollback: the K/V of the last emitted token and of rejected drafts is not valid; the next
                # step recomputes from the last token and overwrites the rest. Blocks stay held (and were
                # registered above only up to the tokens known before this step).
                request.num_computed_tokens = request.num_tokens + len(token_ids) - 1
            # A request preempted after this step was scheduled keeps its tokens: the recompute
            # then includes them, as if the preemption had come one step later.
            for token_id in token_ids:
                request.append_token(token_id)
                if check_stop(request, token_id, max_model_len):
                    if status is not _RUNNING:
                        self.waiting.remove(request)
                    self._finish(request)
                    any_finished = True
                    break
        if any_finished:
            self.running = [r for r in self.running if r.status is _RUNNING]
        return updated

    def _add_scheduled(
        self, scheduled: list[ScheduledRequest], request: Request, num_new: int, drafts: list[int] | None = None
    ) -> None:
        """Put `num_new` tokens of `request` (its `drafts` last) in this step and advance the request past them."""
        drafts = drafts or []
        start = request.num_computed_tokens
        samples = start + num_new - len(drafts) == request.num_tokens + request.num_pending_tokens
        block_ids = self.kv_cache_manager.get_block_ids(request.request_id)
        scheduled.append(ScheduledRequest(request, num_new, block_ids, start, samples, drafts))
        request.num_computed_tokens = start + num_new
        request.num_pending_tokens += samples

    def _schedule_running(self, scheduled: list[ScheduledRequest], budget: int, seats: int) -> tuple[int, bool]:
        """Schedule running requests in order (up to `seats` of them), preempting on a block shortage; return
        (budget, preempted)."""
        kv = self.kv_cache_manager
        running = self.running
        preempted = False
        index = 0
        while index < len(running) and budget > 0 and len(scheduled) < seats:
            request = running[index]
            num_pending = request.num_pending_tokens
            if num_pending and (
                self.wait_for_sampled_tokens
                or reaches_length(request, request.num_tokens + num_pending, self.max_model_len)
            ):
                index += 1  # its token in flight is its last, or it waits for it: nothing to compute now
                continue
            num_new = min(request.num_tokens + num_pending - request.num_computed_tokens, budget)
            if num_new <= 0:  # its sampled token never came back; nothing to compute
                index += 1
                continue
            drafts = self._fit_drafts(request, num_new, budget)
            num_new += len(drafts)
            while kv.allocate_slots(request, num_new) is None:
                victim_index = self._victim_index()
                victim = running.pop(victim_index)
                if victim_index < index:  # already scheduled this step (priority policy)
                    index -= 1
                    budget += self._unschedule(scheduled, victim)
                self._preempt(victim)
                preempted = True
                if victim is request:
                    return budget, preempted
            self._reserve_lookahead(request, num_new)
            self._add_scheduled(scheduled, request, num_new, drafts)
            budget -= num_new
            index += 1
        return budget, preempted

    def _reserve_lookahead(self, request: Request, num_new: int) -> None:
        """Best effort: blocks for num_lookahead_tokens past this step's tokens (within the context), never
        preempting for them."""
        room = self.max_model_len - request.num_computed_tokens - num_new
        extra = min(self.num_lookahead_tokens, room)
        if extra > 0:
            self.kv_cache_manager.allocate_slots(request, num_new + extra)

    def _fit_drafts(self, request: Request, num_new: int, budget: int) -> list[int]:
        """The request's proposed drafts that this step can verify: it decodes, and they fit the budget and blocks."""
        drafts, request.spec_token_ids = request.spec_token_ids, []
        if not drafts or num_new != 1 or request.num_pending_tokens:
            return []
        drafts = drafts[: budget - 1]
        # A guess is not worth a preemption: without free blocks for them the drafts are dropped.
        if drafts and self.kv_cache_manager.allocate_slots(request, 1 + len(drafts)) is None:
            return []
        return drafts

    def _schedule_waiting(self, scheduled: list[ScheduledRequest], budget: int, seats: int) -> int:
        """Admit waiting requests while budget, seats (`seats` in this step) and blocks last; return the budget
        left."""
        kv = self.kv_cache_manager
        waiting = self.waiting
        skipped = []  # siblings waiting for a shared prompt: they don't block the queue
        while waiting and budget > 0 and len(self.running) < self.max_num_seqs and len(scheduled) < seats:
            request = waiting.pop()
            if request.num_pending_tokens:  # preempted with a token in flight: wait for it
                skipped.append(request)
                continue
            if request.wait_for is not None:
                if not _prompt_ready(request.wait_for):
                    skipped.append(request)
                    continue
                request.wait_for = None
            computed_blocks, num_cached = kv.get_computed_blocks(request)
            num_new = self._num_tokens_to_admit(request, num_cached, budget)
            if num_new == 0 or kv.allocate_slots(request, num_new, computed_blocks) is None:
                waiting.push_front(request)  # FCFS: later requests don't jump ahead
                break
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = num_cached
            self._reserve_lookahead(request, num_new)
            request.status = _RUNNING
            self.running.append(request)
            self._add_scheduled(scheduled, request, num_new)
            budget -= num_new
        for request in reversed(skipped):
            waiting.push_front(request)
        return budget

    def _num_tokens_to_admit(self, request: Request, num_cached: int, budget: int) -> int:
        """Tokens a newly admitted request computes this step; 0 means it must wait."""
        remaining = request.num_tokens - num_cached
        if remaining <= budget:
            return remaining
        if self.enable_chunked_prefill or remaining > self.max_num_batched_tokens:
            # The second case is a recompute that outgrew the budget: split it or it never runs.
            return budget
        return 0

    def _victim_index(self) -> int:
        """Index in `running` of the request to preempt."""
        running = self.running
        if self.policy == "priority":
            return max(range(len(running)), key=lambda i: (running[i].priority, running[i].arrival_time))
        return len(running) - 1

    def _unschedule(self, scheduled: list[ScheduledRequest], request: Request) -> int:
        """Drop `request` from this step's batch; return the tokens it had been given."""
        for position, item in enumerate(scheduled):
            if item.request is request:
                del scheduled[position]
                request.num_pending_tokens -= item.samples
                return item.num_new_tokens
        return 0

    def _preempt(self, request: Request) -> None:
        """Free the request's blocks and queue it at the front to be recomputed from scratch.

        A token it has in flight still arrives (update_from_output appends it) before it is readmitted.
        """
        self.kv_cache_manager.free(request)
        request.num_computed_tokens = 0
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.push_front(request)

    def _finish(self, request: Request) -> None:
        """Forget a request that just ended and release its blocks (the caller removes it from running).

        A request failed by an engine error takes its blocks out of the prefix cache: the failed
        step may not have written the K/V they were registered for.
        """
        self.kv_cache_manager.free(request, uncache=request.status is RequestStatus.FINISHED_ERROR)
        del self._requests[request.request_id]
        self._finished_ids.add(request.request_id)


def _prompt_ready(sibling: Request) -> bool:
    """True once `sibling`'s prompt K/V is in the prefix cache (its first token came back) or it ended."""
    return sibling.is_finished or sibling.num_tokens > sibling.num_prompt_tokens
