"""SpeculativeDecoder: what the engine core calls to speculate, between steps, on the host.

After each step it proposes drafts for the running requests that may speculate (they go on
`Request.spec_token_ids`; the scheduler fits them into the next step and the model runner verifies
them), and it counts drafted and accepted tokens so benchmarks and metrics can show the acceptance.
A proposer is anything with `propose_for(requests, ks)`: the n-gram lookup or a draft model.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from forgellm.engine.request import Request
from forgellm.scheduling.scheduler_output import SchedulerOutput
from forgellm.spec_decode.config import SpeculativeConfig
from forgellm.spec_decode.governor import SpeculationGovernor
from forgellm.spec_decode.ngram import NgramProposer
from forgellm.worker.in_flight import StepHiddenStates


class Proposer(Protocol):
    def propose_for(
        self, requests: Sequence[Request], ks: Sequence[int], hidden_states: StepHiddenStates | None = None
    ) -> list[list[int]]:
        """Up to ks[i] drafts for each running request (ks[i] = 0: none); `hidden_states`: the target's
        features from the step just finished (EAGLE-3 reads them)."""


class SpeculativeDecoder:
    """Proposes drafts for the next step and keeps the acceptance counters."""

    def __init__(self, config: SpeculativeConfig, max_model_len: int, proposer: Proposer | None = None) -> None:
        config.validate_for_model(max_model_len)
        if proposer is None and config.method != "ngram":
            raise ValueError(f"speculative method {config.method} needs its proposer (a loaded model)")
        self.config = config
        self.max_model_len = max_model_len
        self.proposer = proposer or NgramProposer.from_config(config)
        self.governor = SpeculationGovernor() if config.disable_by_batch_size == "auto" else None
        self.reset_stats()

    def reset_stats(self) -> None:
        """Zero the drafted and accepted counters (e.g. after a start-up warm-up)."""
        self.draft_seconds = 0.0  # host wall time spent proposing (a draft model's forwards included)
        self.num_spec_steps = 0  # (request, step) pairs that verified drafts
        self.num_draft_tokens = 0
        self.num_accepted_tokens = 0
        # num_accepted_per_position[i]: drafts accepted at position i (accepted only after those at 0..i-1).
        self.num_accepted_per_position = [0] * self.config.num_speculative_tokens

    @staticmethod
    def can_speculate(request: Request) -> bool:
        """Whether a request may verify drafts: it is decoding (its tokens but the last are computed and none
        is in flight). Its sampling settings do not matter: the verify step applies all of them per position."""
        # Constrained requests do not yet: their grammar would have to mask each draft position and roll back.
        ready = request.num_computed_tokens == request.num_tokens - 1 and request.num_pending_tokens == 0
        return ready and request.grammar is None

    def max_drafts(self, request: Request) -> int:
        """Drafts that keep the verify step's emitted tokens within max_model_len and max_tokens."""
        # d drafts emit up to d + 1 tokens; the step writes K/V up to position num_tokens - 1 + d.
        room = min(self.max_model_len - request.num_tokens, request.max_tokens - request.num_output_tokens) - 1
        return min(self.config.num_speculative_tokens, room)

    def propose(self, running: Sequence[Request], hidden_states: StepHiddenStates | None = None) -> None:
        """Set every running request's drafts for the next step (none when it may not speculate)."""
        speculate = self.config.should_speculate(len(running))
        if speculate and self.governor is not None:
            speculate = self.governor.should_speculate(len(running))
        ks = [self.max_drafts(r) if speculate and self.can_speculate(r) else 0 for r in running]
        start = time.perf_counter()
        proposals = self.proposer.propose_for(running, ks, hidden_states)
        self.draft_seconds += time.perf_counter() - start
        for request, drafts in zip(running, proposals):
            request.spec_token_ids = drafts

    def record(self, scheduler_output: SchedulerOutput, sampled_token_ids: Mapping[str, list[int]]) -> None:
        """Count the drafts a step verified and how many were accepted (emitted tokens minus the one sampled)."""
        for item in scheduler_output.scheduled:
            tokens = sampled_token_ids.get(item.request.request_id)
            if not item.spec_token_ids or not tokens:
                continue
            accepted = len(tokens) - 1
            self.num_spec_steps += 1
            self.num_draft_tokens += len(item.spec_token_ids)
            self.num_accepted_tokens += accepted
            for position in range(accepted):
                self.num_accepted_per_position[position] += 1

    def observe_step(
        self, scheduler_output: SchedulerOutput, sampled_token_ids: Mapping[str, list[int]], seconds: float
    ) -> None:
        """Tell the governor (auto mode) how long a step took, proposing included, if it only decoded."""
        scheduled = scheduler_output.scheduled
        if self.governor is None or not scheduled:
            return
        if not all(s.samples and s.num_new_tokens == 1 + len(s.spec_token_ids) for s in scheduled):
            return  # prompt chunks in the step: its speed says nothing about decoding
        num_tokens = sum(len(sampled_token_ids.get(s.request.request_id, ())) for s in scheduled)
        speculated = any(s.spec_token_ids for s in scheduled)
        self.governor.observe(len(scheduled), speculated, num_tokens, seconds)
