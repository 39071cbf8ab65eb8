"""OutputProcessor: engine-core outputs (token ids) -> RequestOutputs (text, logprobs, finish).

It detokenizes incrementally, applies stop strings (telling the caller which samples to stop),
and groups the n samples of a request into one RequestOutput. A streamed request gets either the
cumulative output every step (`LLM.stream`) or, with delta=True, only what each step added (the
server): a delta costs the same at token 5 and token 5,000, where a cumulative output copies lists
that grow with every step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from forgellm.engine.core import EngineCoreOutput
from forgellm.engine.detokenizer import IncrementalDetokenizer
from forgellm.engine.stop_strings import StopStringMatcher
from forgellm.hf.tokenizer import Tokenizer
from forgellm.outputs import CompletionOutput, Logprob, PositionLogprobs, RequestMetrics, RequestOutput
from forgellm.sampling_params import SamplingParams
from forgellm.worker.model_runner import TokenLogprobs


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
    num_cached_tokens: int = 0

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.samples)


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
        samples = [
            SampleState(
                index=i,
                detokenizer=(
                    IncrementalDetokenizer(self.tokenizer, prompt_token_ids, params.skip_special_tokens)
                    if params.detokenize
                    else None
                ),
                stop_matcher=StopStringMatcher(params.stop, params.include_stop_str_in_output),
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

    def abort_request(self, request_id: str) -> list[str]:
        """Forget a request; returns its engine sample ids so the caller can abort them."""
        state = self.requests.pop(request_id, None)
        if state is None:
            return []
        for sample_id in state.sample_ids:
            self.sample_owner.pop(sample_id, None)
        return state.sample_ids

    def process(self, core_outputs: list[EngineCoreOutput]) -> tuple[list[RequestOutput], list[str]]:
        """Apply one step's outputs. Returns the changed requests and the sample ids a stop string ended."""
        now = time.monotonic()
        changed: dict[str, RequestState] = {}
        stopped: list[str] = []
        for out in core_outputs:
            owner = self.sample_owner.get(out.request_id)
            if owner is None:
                continue  # aborted by the user while the step ran
            state, sample = owner
            changed[state.request_id] = state
            self._record_metrics(state, out, now)
            if out.prompt_logprobs is not None and sample.index == 0:
                self._append_prompt_logprobs(state, out.prompt_logprobs)
            if out.new_token_ids and sample.finish_reason is None:
                if self._append_tokens(sample, out) and not out.finished:
                    stopped.append(out.request_id)
            if out.finished and sample.finish_reason is None:
                if sample.detokenizer is not None:  # a trailing partial character, as decode() shows it
                    sample.text += sample.detokenizer.flush()
                sample.finish_reason, sample.stop_reason = out.finish_reason, out.stop_reason
        results = []
        for state in changed.values():
            if state.finished:
                state.metrics.finished_time = now
                self.abort_request(state.request_id)
            if state.delta:
                results.append(self._delta_output(state))
            elif state.finished or state.stream:
                results.append(self._request_output(state))
        return results, stopped

    def _record_metrics(self, state: RequestState, out: EngineCoreOutput, now: float) -> None:
        m = state.metrics
        if m.first_scheduled_time is None:
            m.first_scheduled_time = out.first_scheduled_time
            state.num_cached_tokens = m.num_cached_tokens = out.num_cached_tokens
        if out.new_token_ids:
            m.first_token_time = m.first_token_time or now
            m.last_token_time = now

    def _append_tokens(self, sample: SampleState, out: EngineCoreOutput) -> bool:
        """Add new tokens and their text; returns True if a stop string ended the sample."""
        sample.token_ids.extend(out.new_token_ids)
        if sample.logprobs is not None and out.logprobs is not None:
            sample.logprobs.append(self._position_logprobs(out.logprobs, sample.detokenizer is not None))
            sample.cumulative_logprob += out.logprobs.logprobs[0]
        if sample.detokenizer is None:
            return False
        delta = sample.detokenizer.update(out.new_token_ids)
        sample.text += delta
        match = sample.stop_matcher.check(sample.text, len(delta))
        if match is None:
            return False
        sample.text = sample.text[: match.truncate_to]
        sample.finish_reason, sample.stop_reason = "stop", match.stop_str
        return True

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

    def _request_output(self, state: RequestState) -> RequestOutput:
        outputs = []
        for s in state.samples:
            text = s.text
            if s.finish_reason is None:  # while running, hide what might become a stop string
                text = text[: len(text) - s.stop_matcher.holdback(text)]
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
        )

    def _delta_output(self, state: RequestState) -> RequestOutput:
        """What each sample gained since the last output: one CompletionOutput per sample, in order.

        A sample's finish_reason comes once, with its last delta; later deltas of a finished sample
        (its siblings still running) are empty with finish_reason None. Prompt logprobs, which can
        arrive over several prefill chunks, come whole with the last output.
        """
        outputs = []
        for s in state.samples:
            end = len(s.text)
            if s.finish_reason is None:  # while running, hide what might become a stop string
                end -= s.stop_matcher.holdback(s.text)
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
            prompt_logprobs=state.prompt_logprobs if state.finished else None,
            metrics=state.metrics,
            num_cached_tokens=state.num_cached_tokens,
            delta=True,
        )
