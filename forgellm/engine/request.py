"""Request: one sequence being generated, as the scheduler and KV cache manager see it."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from forgellm.sampling_params import SamplingParams

if TYPE_CHECKING:
    from forgellm.multimodal.inputs import MultimodalPrompt
    from forgellm.structured.state import GrammarState


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5
    FINISHED_ERROR = 6  # the engine failed while serving it (see EngineCore.step)

    @property
    def is_finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str | None:
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
    RequestStatus.FINISHED_ERROR: "error",
}


@dataclass(eq=False)
class Request:
    """A single sequence. A user request with `n > 1` becomes n Requests (one per sample).

    `all_token_ids` is prompt + output in one list so that appending a token is O(1).
    `num_computed_tokens` counts the tokens whose K/V are in the cache or computed by a step already
    scheduled (the scheduler advances it when it schedules). `num_pending_tokens` counts tokens sampled
    by scheduled steps whose ids the host has not seen yet (a step in flight on the GPU): the next
    step computes them from the GPU's copy.
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    max_tokens: int  # resolved: never None here
    eos_token_ids: frozenset[int] = frozenset()
    arrival_time: float = field(default_factory=time.monotonic)
    priority: int = 0
    # A sibling (same prompt, n > 1) whose prompt must be cached before this one starts, so the
    # prompt blocks are computed once and shared through the prefix cache.
    wait_for: Request | None = None
    sample_index: int = 0
    # The sample's place in its output constraint (structured output); advanced by every appended token.
    grammar: GrammarState | None = None
    # Images of a vision-language prompt: patches, placeholder spans, M-RoPE positions (shared by siblings).
    multimodal: MultimodalPrompt | None = None

    all_token_ids: list[int] = field(init=False)
    num_computed_tokens: int = field(default=0, init=False)
    num_pending_tokens: int = field(default=0, init=False)
    status: RequestStatus = field(default=RequestStatus.WAITING, init=False)
    stop_reason: int | str | None = field(default=None, init=False)
    num_preemptions: int = field(default=0, init=False)
    num_cached_tokens: int = field(default=-1, init=False)  # prefix-cache hit at first schedule
    # Chained hashes of the full blocks of all_token_ids, maintained by the KVCacheManager.
    block_hashes: list[int] = field(default_factory=list, init=False)
    first_scheduled_time: float | None = field(default=None, init=False)
    # Draft tokens proposed for the next step (speculative decoding); the scheduler takes them.
    spec_token_ids: list[int] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.all_token_ids = list(self.prompt_token_ids)
        # (first token, end, content hash) of each image: mixed into the hashes of the blocks they touch.
        self.mm_hash_spans = self.multimodal.hash_spans() if self.multimodal is not None else []

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.all_token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.all_token_ids[len(self.prompt_token_ids) :]

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    def append_token(self, token_id: int) -> None:
        self.all_token_ids.append(token_id)
        if self.grammar is not None:
            self.grammar.accept(token_id, self.num_output_tokens - 1)
