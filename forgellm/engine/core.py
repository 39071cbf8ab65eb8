"""EngineCore: the heartbeat. schedule -> execute -> sample -> update, one step at a time."""

from __future__ import annotations

import time
from dataclasses import dataclass

from forgellm.engine.request import Request, RequestStatus
from forgellm.errors import CapacityError, ContextLengthError
from forgellm.scheduling.kv_cache import KVCacheManager
from forgellm.scheduling.scheduler import Scheduler
from forgellm.worker.in_flight import InFlightStep
from forgellm.worker.model_runner import ModelRunner, TokenLogprobs


@dataclass
class EngineCoreOutput:
    """What happened to one request in one step (new token, prompt logprobs, finish)."""

    request_id: str
    new_token_ids: list[int]
    logprobs: TokenLogprobs | None = None
    prompt_logprobs: tuple[int, list[TokenLogprobs]] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0
    first_scheduled_time: float | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class EngineStats:
    """Counters and gauges of the engine, for logs and metrics."""

    num_running: int
    num_waiting: int
    kv_cache_usage: float
    prefix_cache_hit_rate: float
    num_preemptions: int


class EngineCore:
    """Owns the scheduler, the KV-cache manager and the model runner; knows nothing of text.

    With `async_scheduling` a step launches the next batch before it reads the results of the one
    in flight, so the host's scheduling, batch building and output handling overlap the GPU's
    forward pass. Outputs then come one step later; a request that stops on a sampled token (EOS, a
    stop token) has had one more step computed for it, which is discarded.
    """

    def __init__(
        self, runner: ModelRunner, scheduler: Scheduler, kv_cache: KVCacheManager, async_scheduling: bool = False
    ) -> None:
        self.runner = runner
        self.scheduler = scheduler
        self.kv_cache = kv_cache
        self.async_scheduling = async_scheduling
        self._in_flight: InFlightStep | None = None

    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> None:
        """Raise if this request could never run: too big for the whole KV cache or the step budget."""
        scheduler = self.scheduler
        if not scheduler.enable_chunked_prefill and num_prompt_tokens > scheduler.max_num_batched_tokens:
            raise ContextLengthError(
                f"the prompt has {num_prompt_tokens} tokens but chunked prefill is off and a step holds at most "
                f"{scheduler.max_num_batched_tokens} (max_num_batched_tokens); enable chunked prefill or raise it",
                "prompt",
            )
        num_tokens = num_prompt_tokens + max_tokens
        needed = -(-num_tokens // self.kv_cache.block_size)
        if needed > self.kv_cache.num_blocks:
            capacity = self.kv_cache.num_blocks * self.kv_cache.block_size
            raise CapacityError(
                f"the request needs up to {num_tokens} tokens of KV cache but the whole cache holds "
                f"{capacity}; lower max_tokens or give the engine more KV-cache memory"
            )

    def add_request(self, request: Request) -> None:
        self.check_fits(request.num_prompt_tokens, request.max_tokens)
        self.scheduler.add_request(request)

    def abort_requests(self, request_ids: list[str], status: RequestStatus = RequestStatus.FINISHED_ABORTED) -> None:
        self.scheduler.abort_requests(request_ids, status)

    def has_unfinished_requests(self) -> bool:
        """True while any request is waiting or running.

        A step may still be in flight when this turns False, but then every request in it has ended
        (aborted or stopped) and its results would be discarded; the next step collects it.
        """
        return self.scheduler.has_unfinished_requests()

    def step(self) -> list[EngineCoreOutput]:
        """Run one engine step; returns an output for every request that progressed.

        Synchronous: schedule, launch, wait, update. Asynchronous: schedule and launch step N+1,
        then wait for step N and return its outputs.
        """
        scheduler_output = self.scheduler.schedule()
        launched = None
        if scheduler_output.is_empty:
            self.runner.release(scheduler_output.finished_request_ids)
        else:
            now = time.monotonic()
            for s in scheduler_output.scheduled:
                if s.request.first_scheduled_time is None:
                    s.request.first_scheduled_time = now
            launched = self.runner.launch(scheduler_output, self._in_flight)
        if self.async_scheduling:
            done, self._in_flight = self._in_flight, launched
        else:
            done = launched
        return [] if done is None else self._finish_step(done)

    def _finish_step(self, step: InFlightStep) -> list[EngineCoreOutput]:
        """Wait for a launched step, update the requests with its tokens, and report them."""
        result = self.runner.collect(step)
        scheduler_output = step.scheduler_output
        updated = self.scheduler.update_from_output(scheduler_output, result.sampled_token_ids)
        outputs: dict[str, EngineCoreOutput] = {}
        for request in updated:
            out = self._output_for(request)
            out.new_token_ids = [request.all_token_ids[-1]]
            out.logprobs = result.logprobs.get(request.request_id)
            outputs[request.request_id] = out
        if result.prompt_logprobs:
            scheduled = {s.request.request_id: s.request for s in scheduler_output.scheduled}
            for request_id, entries in result.prompt_logprobs.items():
                if request_id not in outputs:
                    outputs[request_id] = self._output_for(scheduled[request_id])
                outputs[request_id].prompt_logprobs = entries
        return list(outputs.values())

    @staticmethod
    def _output_for(request: Request) -> EngineCoreOutput:
        return EngineCoreOutput(
            request_id=request.request_id,
            new_token_ids=[],
            finish_reason=request.status.finish_reason,
            stop_reason=request.stop_reason,
            num_cached_tokens=max(request.num_cached_tokens, 0),
            first_scheduled_time=request.first_scheduled_time,
        )

    def stats(self) -> EngineStats:
        return EngineStats(
            num_running=self.scheduler.num_running,
            num_waiting=self.scheduler.num_waiting,
            kv_cache_usage=self.kv_cache.usage,
            prefix_cache_hit_rate=self.kv_cache.prefix_cache_hit_rate,
            num_preemptions=self.scheduler.num_preemptions,
        )
