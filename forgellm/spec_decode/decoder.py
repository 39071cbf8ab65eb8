"""SpeculativeDecoder: what the engine core calls to speculate, between steps, on the host.

After each step it proposes drafts for the running requests that may speculate (they go on
`Request.spec_token_ids`; the scheduler fits them into the next step and the model runner verifies
them), and it counts drafted and accepted tokens so benchmarks and metrics can show the acceptance.
Only the n-gram proposer exists so far; draft-model and EAGLE-3 proposers will plug in here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from forgellm.engine.request import Request
from forgellm.scheduling.scheduler_output import SchedulerOutput
from forgellm.spec_decode.config import SpeculativeConfig
from forgellm.spec_decode.ngram import NgramProposer


class SpeculativeDecoder:
    """Proposes drafts for the next step and keeps the acceptance counters."""

    def __init__(self, config: SpeculativeConfig, max_model_len: int) -> None:
        if config.method != "ngram":
            raise NotImplementedError(f"speculative decoding with {config.method} is not implemented yet; use ngram")
        config.validate_for_model(max_model_len)
        self.config = config
        self.max_model_len = max_model_len
        self.proposer = NgramProposer.from_config(config)
        self.reset_stats()

    def reset_stats(self) -> None:
        """Zero the drafted and accepted counters (e.g. after a start-up warm-up)."""
        self.num_draft_tokens = 0
        self.num_accepted_tokens = 0
        # num_accepted_per_position[i]: drafts accepted at position i (accepted only after those at 0..i-1).
        self.num_accepted_per_position = [0] * self.config.num_speculative_tokens

    @staticmethod
    def can_speculate(request: Request) -> bool:
        """Whether a request may verify drafts: it is decoding, and its sampling does not change per position.

        Penalties and min_tokens depend on the tokens before each position, and logprobs would need one entry
        per verified position; such requests decode one token a step (in the same batches).
        """
        params = request.sampling_params
        return (
            request.num_computed_tokens == request.num_tokens - 1
            and request.num_pending_tokens == 0
            and params.presence_penalty == 0
            and params.frequency_penalty == 0
            and params.repetition_penalty == 1.0
            and params.logprobs is None
            and params.prompt_logprobs is None
            and request.num_output_tokens >= params.min_tokens
        )

    def max_drafts(self, request: Request) -> int:
        """Drafts that keep the verify step's emitted tokens within max_model_len and max_tokens."""
        # d drafts emit up to d + 1 tokens; the step writes K/V up to position num_tokens - 1 + d.
        room = min(self.max_model_len - request.num_tokens, request.max_tokens - request.num_output_tokens) - 1
        return min(self.config.num_speculative_tokens, room)

    def propose(self, running: Sequence[Request]) -> None:
        """Set every running request's drafts for the next step (none when it may not speculate)."""
        speculate = self.config.should_speculate(len(running))
        for request in running:
            k = self.max_drafts(request) if speculate and self.can_speculate(request) else 0
            request.spec_token_ids = self.proposer.propose(request.all_token_ids, k) if k > 0 else []

    def record(self, scheduler_output: SchedulerOutput, sampled_token_ids: Mapping[str, list[int]]) -> None:
        """Count the drafts a step verified and how many were accepted (emitted tokens minus the one sampled)."""
        for item in scheduler_output.scheduled:
            tokens = sampled_token_ids.get(item.request.request_id)
            if not item.spec_token_ids or not tokens:
                continue
            accepted = len(tokens) - 1
            self.num_draft_tokens += len(item.spec_token_ids)
            self.num_accepted_tokens += accepted
            for position in range(accepted):
                self.num_accepted_per_position[position] += 1
