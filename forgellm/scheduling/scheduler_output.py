"""What the scheduler decided for one step: the contract between scheduling and execution."""

from __future__ import annotations

from dataclasses import dataclass, field

from forgellm.engine.request import Request


@dataclass
class ScheduledRequest:
    """One request's share of a step: `num_new_tokens` tokens from position `start`.

    `block_ids` is the request's block table (owned by the KVCacheManager; read it, don't mutate it).
    `start` and `samples` are fixed when the step is scheduled: the request itself moves on (the
    scheduler may schedule its next step before this one's sampled token is known).
    """

    request: Request
    num_new_tokens: int
    block_ids: list[int]
    start: int  # position of the first token computed this step
    samples: bool  # this step reaches the end of the request's tokens, so it samples a new one
    # Draft tokens verified this step after the request's last token (counted in num_new_tokens).
    spec_token_ids: list[int] = field(default_factory=list)


@dataclass
class SchedulerOutput:
    """The batch of one engine step, in batch order, plus bookkeeping for the model runner."""

    scheduled: list[ScheduledRequest] = field(default_factory=list)
    num_batched_tokens: int = 0
    # Requests that ended (finished or aborted) since the last step: the model runner drops the
    # per-request state it keeps for them (seeded generators). Preempted requests keep theirs, so a
    # seeded request samples the same tokens whether or not it was preempted.
    finished_request_ids: set[str] = field(default_factory=set)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled
