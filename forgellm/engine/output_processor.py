"""OutputProcessor: engine-core outputs (token ids) -> RequestOutputs (text, logprobs, finish).

It detokenizes incrementally, applies stop strings (telling the caller which samples to stop),
and groups the n samples of a request into one RequestOutput. A streamed request gets either the
cumulative output every step (`LLM.stream`) or, with delta=True, only what each step added (the
server): a delta costs the same at token 5 and token 5,000, where a cumulative output copies lists
that grow with every step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from forgellm.engine.core import EngineCoreOutput
from forgellm.engine.detokenizer import IncrementalDetokenizer
from forgellm.engine.stop_strings import StopStringMatcher, StopStrings
from forgellm.hf.tokenizer import Tokenizer
from forgellm.outputs import CompletionOutput, Logprob, PositionLogprobs, RequestMetrics, RequestOutput
from forgellm.sampling_params import SamplingParams
from forgellm.worker.model_runner import TokenLogprobs

logger = logging.getLogger(__name__)


@dataclass
class SampleState:
    """One sample (sequence) of a request as the user sees it."""

    index: int
    detokenizer: IncrementalDetokenizer | None  # None when the request asked for token ids only
    stop_matcher: StopStringMatcher
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[PositionLogprobs] | None = None
    cumulative_logprob: float | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    # What earlier delta outputs carried (delta mode only): the next delta starts here.
    emitted_text_len: int = 0
    emitted_tokens: int = 0
    emitted_logprobs: int = 0
    emitted_finish: bool = False


@dataclass
class RequestState:
    """A user request and its samples, from arrival to the last output."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    samples: list[SampleState]
    sample_ids: list[str]  # the engine's id of each sample
    metrics: RequestMetrics
    stream: bool = False  # emit an output every step, not only at the end
    delta: bool = False  # streamed outputs carry only what is new since the previous one
    prompt_logprobs: list[PositionLogprobs | None] | None = None
    emitted_prompt_logprobs: bool = False  # delta mode: they go out once, as soon as they are whole
    num_cached_tokens: int = 0
    error: str | None = None  # why the engine failed it, if it did

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.samples)


@dataclass
class ProcessedOutputs:
    """One step's outputs for the callers, and the engine samples the caller must end."""

    outputs: list[RequestOutput]
    stopped: list[str]  # ended by a stop string
    failed: list[str]  # of requests whose outputs could not be processed


class OutputProcessor:
    """Keeps the per-request text state; maps each engine sample id back to its request."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.requests: dict[str, RequestState] = {}
        self.sample_owner: dict[str, tuple[RequestState, SampleState]] = {}

    def add_request(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        sample_ids: list[str],
        arrival_time: float,
        stream: bool = False,
        delta: bool = False,
    ) -> None:
        """Register a request whose samples run in the engine under `sample_ids`.

        With stream=False the request yields one RequestOutput, when it finishes. With stream=True
        and delta=True every output holds only the text, tokens and logprobs new since the last one
        (see `delta_output`).
        """
        stops = StopStrings(params.stop, params.include_stop_str_in_output)
        samples = [
            SampleState(
                index=i,
                detokenizer=(
                    IncrementalDetokenizer(self.tokenizer, prompt_token_ids, params.skip_special_tokens)
                    if params.detokenize
                    else None
                ),
                stop_matcher=stops.matcher(),
                logprobs=[] if params.logprobs is not None else None,
                cumulative_logprob=0.0 if params.logprobs is not None else None,
            )
            for i in range(len(sample_ids))
        ]
        state = RequestState(
            request_id,
            prompt,
            prompt_token_ids,
            params,
            samples,
            list(sample_ids),
            RequestMetrics(arrival_time),
            stream=stream,
            delta=stream and delta,
        )
        if params.prompt_logprobs is not None:
            state.prompt_logprobs = [None]  # the first prompt token has no context to score it
        self.requests[request_id] = state
        for sample_id, sample in zip(sample_ids, samples):
            self.sample_owner[sample_id] = (state, sample)

    def abort_request(self, request_id: str) -> tuple[list[str], RequestOutput | None]:
        """Forget a request; returns its engine sample ids (for the caller to abort) and its final
        output, with finish_reason "abort" on the samples still running (None for an unknown id)."""
        state = self.requests.get(request_id)
        if state is None:
            return [], None
        for sample in state.samples:
            if sample.finish_reason is None:
                sample.finish_reason = "abort"
        self._forget(state)
        return state.sample_ids, self._output(state)

    def _forget(self, state: RequestState) -> None:
        self.requests.pop(state.request_id, None)
        for sample_id in state.sample_ids:
            self.sample_owner.pop(sample_id, None)

    def process(self, core_outputs: list[EngineCoreOutput]) -> ProcessedOutputs:
        """Apply one step's outputs: the changed requests' outputs, and the samples to end.

        An exception while processing one request's output fails that request alone (its output
        says finish_reason "error"); the caller ends its samples in the engine.
        """
        now = time.monotonic()
        changed: dict[str, RequestState] = {}
        stopped: list[str] = []
        failed: list[str] = []
        for out in core_outputs:
            owner = self.sample_owner.get(out.request_id)
            if owner is None:
                continue  # aborted by the user while the step ran
            state, sample = owner
            changed[state.request_id] = state
            try:
                if self._apply(state, sample, out, now):
                    stopped.append(out.request_id)
            except Exception as exc:
                logger.error("processing the output of request %r failed", state.request_id, exc_info=exc)
                self._fail(state, f"the engine failed while processing this request's output: {exc!r}")
                failed.extend(state.sample_ids)
        results = []
        for state in changed.values():
            if state.finished:
                state.metrics.finished_time = now
                self._forget(state)
            if state.finished or state.stream:
                results.append(self._output(state))
        return ProcessedOutputs(results, stopped, failed)

    def _apply(self, state: RequestState, sample: SampleState, out: EngineCoreOutput, now: float) -> bool:
        """Apply one engine output to its sample; returns True if a stop string ended the sample."""
        self._record_metrics(state, out, now)
        if out.prompt_logprobs is not None and sample.index == 0:
            self._append_prompt_logprobs(state, out.prompt_logprobs)
        stopped = False
        if out.new_token_ids and sample.finish_reason is None:
            stopped = self._append_tokens(sample, out, state.params.min_tokens) and not out.finished
        if out.finished and sample.finish_reason is None:
            if sample.detokenizer is not None:  # a trailing partial character, as decode() shows it
                sample.text += sample.detokenizer.flush()
            sample.finish_reason, sample.stop_reason = out.finish_reason, out.stop_reason
            if out.error is not None:
                state.error = out.error
        return stopped

    def _fail(self, state: RequestState, error: str) -> None:
        """Finish every running sample of `state` with finish_reason "error"."""
        state.error = error
        for sample in state.samples:
            if sample.finish_reason is None:
                sample.finish_reason = "error"

    def _record_metrics(self, state: RequestState, out: EngineCoreOutput, now: float) -> None:
        m = state.metrics
        if m.first_scheduled_time is None:
            m.first_scheduled_time = out.first_scheduled_time
            state.num_cached_tokens = m.num_cached_tokens = out.num_cached_tokens
        if out.new_token_ids:
            m.first_token_time = m.first_token_time or now
            m.last_token_time = now

    def _append_tokens(self, sample: SampleState, out: EngineCoreOutput, min_tokens: int) -> bool:
        """Add new tokens and their text one by one; returns True if a stop string ended the sample.

        Like EOS and stop token ids, stop strings end a sample only once it has min_tokens tokens; the
        tokens of the step after the one that completes a stop string are dropped.
        """
        for index, token_id in enumerate(out.new_token_ids):
            sample.token_ids.append(token_id)
            if sample.logprobs is not None and out.logprobs is not None:
                entry = out.logprobs[index]
                sample.logprobs.append(self._position_logprobs(entry, sample.detokenizer is not None))
                sample.cumulative_logprob += entry.logprobs[0]
            if sample.detokenizer is None:
                continue
            delta = sample.detokenizer.update([token_id])
            sample.text += delta
            match = sample.stop_matcher.feed(delta, report=len(sample.token_ids) >= min_tokens)
            if match is not None:
                sample.text = sample.text[: match.truncate_to]
                sample.finish_reason, sample.stop_reason = "stop", match.stop_str
                return True
        return False

    def _append_prompt_logprobs(self, state: RequestState, entries: tuple[int, list[TokenLogprobs]]) -> None:
        first, positions = entries
        assert state.prompt_logprobs is not None and len(state.prompt_logprobs) == first
        state.prompt_logprobs.extend(self._position_logprobs(e, state.params.detokenize) for e in positions)

    def _position_logprobs(self, entry: TokenLogprobs, decode: bool) -> PositionLogprobs:
        result: PositionLogprobs = {}
        for i, (token, logprob) in enumerate(zip(entry.token_ids, entry.logprobs)):
            if token in result:
                continue  # the chosen token may also be among the top-k
            rank = entry.rank if i == 0 else i
            text = self.tokenizer.decode([token], skip_special_tokens=False) if decode else None
            result[token] = Logprob(logprob, rank, text)
        return result

    def _output(self, state: RequestState) -> RequestOutput:
        return self._delta_output(state) if state.delta else self._request_output(state)

    def _request_output(self, state: RequestState) -> RequestOutput:
        outputs = []
        for s in state.samples:
            text = s.text
            if s.finish_reason is None:  # while running, hide what might become a stop string
                text = text[: len(text) - s.stop_matcher.holdback()]
            outputs.append(
                CompletionOutput(
                    index=s.index,
                    text=text,
                    token_ids=list(s.token_ids),
                    cumulative_logprob=s.cumulative_logprob,
                    logprobs=list(s.logprobs) if s.logprobs is not None else None,
                    finish_reason=s.finish_reason,
                    stop_reason=s.stop_reason,
                )
            )
        return RequestOutput(
            request_id=state.request_id,
            prompt=state.prompt,
            prompt_token_ids=state.prompt_token_ids,
            outputs=outputs,
            finished=state.finished,
            prompt_logprobs=state.prompt_logprobs,
            metrics=state.metrics,
            num_cached_tokens=state.num_cached_tokens,
            error=state.error,
        )

    def _delta_output(self, state: RequestState) -> RequestOutput:
        """What each sample gained since the last output: one CompletionOutput per sample, in order.

        A sample's finish_reason comes once, with its last delta; later deltas of a finished sample
        (its siblings still running) are empty with finish_reason None. Prompt logprobs, which can
        arrive over several prefill chunks, come once, whole: with the first output after the prompt's
        last chunk (the one holding the first token, so a stream can show them before any token), or
        with the last output if the request ends before that.
        """
        outputs = []
        for s in state.samples:
            end = len(s.text)
            if s.finish_reason is None:  # while running, hide what might become a stop string
                end -= s.stop_matcher.holdback()
            finish = s.finish_reason is not None and not s.emitted_finish
            outputs.append(
                CompletionOutput(
                    index=s.index,
                    text=s.text[s.emitted_text_len : end] if end > s.emitted_text_len else "",
                    token_ids=s.token_ids[s.emitted_tokens :],
                    cumulative_logprob=s.cumulative_logprob,
                    logprobs=s.logprobs[s.emitted_logprobs :] if s.logprobs is not None else None,
                    finish_reason=s.finish_reason if finish else None,
                    stop_reason=s.stop_reason if finish else None,
                )
            )
            s.emitted_text_len = max(s.emitted_text_len, end)
            s.emitted_tokens = len(s.token_ids)
            s.emitted_logprobs = len(s.logprobs) if s.logprobs is not None else 0
            s.emitted_finish = s.emitted_finish or finish
        return RequestOutput(
            request_id=state.request_id,
            prompt=state.prompt,
            prompt_token_ids=state.prompt_token_ids,
            outputs=outputs,
            finished=state.finished,
            prompt_logprobs=self._new_prompt_logprobs(state),
            metrics=state.metrics,
            num_cached_tokens=state.num_cached_tokens,
            delta=True,
            error=state.error,
        )

    @staticmethod
    def _new_prompt_logprobs(state: RequestState) -> list[PositionLogprobs | None] | None:
        """The prompt logprobs if they are whole (or the request ended) and not yet emitted."""
        found = state.prompt_logprobs
        if found is None or state.emitted_prompt_logprobs:
            return None
        if len(found) < len(state.prompt_token_ids) and not state.finished:
            return None
        state.emitted_prompt_logprobs = True
        return found
