"""EngineCore: the heartbeat. schedule -> execute -> sample -> update, one step at a time."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from forgellm.engine.request import Request, RequestStatus
from forgellm.errors import EngineDeadError
from forgellm.scheduling.kv_cache import KVCacheManager
from forgellm.scheduling.scheduler import Scheduler
from forgellm.scheduling.scheduler_output import SchedulerOutput
from forgellm.spec_decode.decoder import SpeculativeDecoder
from forgellm.structured.state import GrammarState, accept_ahead
from forgellm.worker.in_flight import InFlightStep
from forgellm.worker.model_runner import ModelRunner, TokenLogprobs

logger = logging.getLogger(__name__)

# Messages of CUDA errors after which the device (its context) can no longer be trusted.
_DEVICE_FAILURE_MARKERS = ("CUDA error", "CUBLAS_STATUS", "CUDNN_STATUS", "device-side assert", "illegal memory access")


@dataclass
class EngineCoreOutput:
    """What happened to one request in one step (new token, prompt logprobs, finish)."""

    request_id: str
    new_token_ids: list[int]
    logprobs: list[TokenLogprobs] | None = None  # one per new token, when the request asked for them
    prompt_logprobs: tuple[int, list[TokenLogprobs]] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0
    first_scheduled_time: float | None = None
    error: str | None = None  # why the engine failed this request (finish_reason "error")

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
    num_aborted: int = 0  # sequences aborted since start
    num_failed: int = 0  # sequences failed by an error in a step since start
    # Speculative decoding since start: verify steps (per request), draft tokens verified, those accepted,
    # and accepted per draft position.
    num_spec_steps: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    num_accepted_per_position: tuple[int, ...] = ()
    spec_draft_seconds: float = 0.0  # host wall time spent proposing drafts


class EngineCore:
    """Owns the scheduler, the KV-cache manager and the model runner; knows nothing of text.

    With `async_scheduling` a step launches the next batch before it reads the results of the one
    in flight, so the host's scheduling, batch building and output handling overlap the GPU's
    forward pass. Outputs then come one step later; a request that stops on a sampled token (EOS, a
    stop token) has had one more step computed for it, which is discarded.

    With a `spec_decoder` (synchronous only) each step's end proposes drafts for the next one.
    """

    def __init__(
        self,
        runner: ModelRunner,
        scheduler: Scheduler,
        kv_cache: KVCacheManager,
        async_scheduling: bool = False,
        spec_decoder: SpeculativeDecoder | None = None,
    ) -> None:
        if async_scheduling and spec_decoder is not None:
            raise ValueError("speculative decoding needs synchronous scheduling")
        self.runner = runner
        self.scheduler = scheduler
        self.kv_cache = kv_cache
        self.async_scheduling = async_scheduling
        self.spec_decoder = spec_decoder
        self._in_flight: InFlightStep | None = None

    def add_request(self, request: Request) -> None:
        """Queue a request that passed admission (RequestLimits)."""
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
        """Run one engine step; returns an output for every request that progressed or failed.

        Synchronous: schedule, launch, wait, update. Asynchronous: schedule and launch step N+1,
        then wait for step N and return its outputs. An exception while launching or finishing a
        step fails that step's requests alone (outputs with finish_reason "error"), unless it is a
        device failure, which no request survives: that one propagates and ends the engine.
        """
        started = time.perf_counter()
        scheduler_output = self.scheduler.schedule()
        failed: list[EngineCoreOutput] = []
        if self._in_flight is not None and self._in_flight.deferred is not None:
            failed += self._sample_in_flight()
        # A constrained request's mask needs its last token on the host: queue this step's forward pass,
        # finish the step in flight while the device runs it (its grammars accept their tokens and at once fill
        # the new masks, on the grammars' pool), and queue the sampling at the next step, before its forward
        # pass: the masks fill while the host updates the requests, hands out their outputs and schedules.
        defer = self._in_flight is not None and _waits_for_tokens(scheduler_output)
        launched = self._launch(scheduler_output, failed, defer)
        if defer:
            done, self._in_flight = self._in_flight, None
            failed += self._finish_or_fail(done, started, fill_masks_of=launched)
        if self.async_scheduling:
            done, self._in_flight = self._in_flight, launched
        else:
            done = launched
        if done is None:
            return failed
        return failed + self._finish_or_fail(done, started)

    def _launch(
        self, scheduler_output: SchedulerOutput, failed: list[EngineCoreOutput], defer_sampling: bool
    ) -> InFlightStep | None:
        """Launch a scheduled step after the one in flight (an empty one only releases the ended requests'
        state); a launch that raises fails the step's requests (their outputs go to `failed`) and gives None."""
        if scheduler_output.is_empty:
            self.runner.release(scheduler_output.finished_request_ids)
            return None
        now = time.monotonic()
        for s in scheduler_output.scheduled:
            if s.request.first_scheduled_time is None:
                s.request.first_scheduled_time = now
        try:
            return self.runner.launch(scheduler_output, self._in_flight, defer_sampling=defer_sampling)
        except Exception as exc:
            failed += self._fail_step(scheduler_output, exc)
            return None

    def _sample_in_flight(self) -> list[EngineCoreOutput]:
        """Queue the deferred sampling of the step in flight (its masks filled meanwhile); if that raises,
        the step's requests fail and nothing is in flight."""
        step = self._in_flight
        try:
            self.runner.sample_deferred(step)
        except Exception as exc:
            self._in_flight = None
            return self._fail_step(step.scheduler_output, exc)
        return []

    def _finish_or_fail(
        self, step: InFlightStep, started: float, fill_masks_of: InFlightStep | None = None
    ) -> list[EngineCoreOutput]:
        """`_finish_step`, or `_fail_step` for its requests when finishing raises."""
        try:
            return self._finish_step(step, started, fill_masks_of)
        except Exception as exc:
            return self._fail_step(step.scheduler_output, exc)

    def _fail_step(self, scheduler_output: SchedulerOutput, exc: Exception) -> list[EngineCoreOutput]:
        """End every request of a step that raised `exc` with finish_reason "error"; the engine goes on.

        Their blocks are freed (and leave the prefix cache), and the model runner drops their state
        when the next schedule reports them finished. Requests that ended within the step are
        reported too, so that nobody waits for an output that will not come.
        """
        if is_device_failure(exc):
            raise exc
        requests = [s.request for s in scheduler_output.scheduled]
        logger.error("a step failed; failing its %d request(s)", len(requests), exc_info=exc)
        self.scheduler.abort_requests([r.request_id for r in requests], RequestStatus.FINISHED_ERROR)
        message = f"the engine failed while running this request: {type(exc).__name__}: {exc}"
        return [
            EngineCoreOutput(
                r.request_id, [], finish_reason="error", first_scheduled_time=r.first_scheduled_time, error=message
            )
            for r in requests
        ]

    def _finish_step(
        self, step: InFlightStep, started: float, fill_masks_of: InFlightStep | None = None
    ) -> list[EngineCoreOutput]:
        """Wait for a launched step, update the requests with its tokens, and report them (`started`: when
        this engine step began, perf_counter). `fill_masks_of`: the step launched after it with deferred
        sampling, whose grammar masks start filling as soon as this step's tokens are accepted."""
        result = self.runner.collect(step)
        scheduler_output = step.scheduler_output
        before = {s.request.request_id: s.request.num_tokens for s in scheduler_output.scheduled}
        tokens = _grammar_tokens(scheduler_output, result.sampled_token_ids)
        if fill_masks_of is not None:
            self.runner.prefetch_masks(fill_masks_of, tokens)()
        elif len(tokens) > 1:
            accept_ahead(tokens)
        updated = self.scheduler.update_from_output(scheduler_output, result.sampled_token_ids)
        if self.spec_decoder is not None:
            self.spec_decoder.record(scheduler_output, result.sampled_token_ids)
            self.spec_decoder.propose(self.scheduler.running, result.hidden_states)
            self.spec_decoder.observe_step(scheduler_output, result.sampled_token_ids, time.perf_counter() - started)
        outputs: dict[str, EngineCoreOutput] = {}
        for request in updated:
            out = self._output_for(request)
            out.new_token_ids = request.all_token_ids[before[request.request_id] :]
            logprobs = result.logprobs.get(request.request_id)
            out.logprobs = None if logprobs is None else logprobs[: len(out.new_token_ids)]  # stops drop the rest
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
            num_aborted=self.scheduler.num_aborted,
            num_failed=self.scheduler.num_failed,
            **self._spec_stats(),
        )

    def _spec_stats(self) -> dict:
        spec = self.spec_decoder
        if spec is None:
            return {}
        return {
            "num_spec_steps": spec.num_spec_steps,
            "num_draft_tokens": spec.num_draft_tokens,
            "num_accepted_tokens": spec.num_accepted_tokens,
            "num_accepted_per_position": tuple(spec.num_accepted_per_position),
            "spec_draft_seconds": spec.draft_seconds,
        }


def is_device_failure(exc: BaseException) -> bool:
    """True for errors after which the engine cannot go on (a CUDA error, not out-of-memory; a lost rank)."""
    if isinstance(exc, EngineDeadError):  # e.g. a tensor-parallel rank that died: no step can run any more
        return True
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    return isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in _DEVICE_FAILURE_MARKERS)


def _waits_for_tokens(scheduler_output: SchedulerOutput) -> bool:
    """Whether a request of the step samples under a grammar while its last token is still in flight (its
    pending tokens count this step's sample too)."""
    return any(
        s.samples and s.request.grammar is not None and s.request.num_pending_tokens > 1
        for s in scheduler_output.scheduled
    )


def _grammar_tokens(
    scheduler_output: SchedulerOutput, sampled_token_ids: dict[str, list[int]]
) -> list[tuple[GrammarState, int, int]]:
    """(grammar, output index, token) of the step's one new token of each constrained request: the batch's
    grammars accept them together (on the grammars' thread pool) before the scheduler appends the tokens one
    request at a time."""
    tokens = []
    for s in scheduler_output.scheduled:
        request = s.request
        new = sampled_token_ids.get(request.request_id)
        if request.grammar is not None and s.samples and new and len(new) == 1 and not request.status.is_finished:
            tokens.append((request.grammar, request.num_output_tokens, new[0]))
    return tokens
