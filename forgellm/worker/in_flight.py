"""InFlightStep: a step queued on the device whose results the host has not read yet.

With asynchronous scheduling the engine launches step N+1 before it reads step N's sampled ids, so
the host prepares the next step while the GPU computes; step N+1 takes the tokens of step N it
needs (placeholders) straight from N's sampled ids on the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from forgellm.engine.request import Request
from forgellm.sampling.sampler import LogprobsTensors
from forgellm.scheduling.scheduler_output import SchedulerOutput


@dataclass
class StepHiddenStates:
    """The target's features of one step, for an EAGLE-3 proposer: rows of `features` per request."""

    features: torch.Tensor  # [>= T, F] on the device: the model's aux buffer, valid until its next forward
    # (request, first position, first row, number of tokens, the request's block table)
    chunks: list[tuple[Request, int, int, int, list[int]]]


@dataclass
class InFlightStep:
    """A launched step: its device results, their host copies and the event that says they landed."""

    scheduler_output: SchedulerOutput
    sample_requests: list[Request]  # row i of `sampled` is sample_requests[i]'s new token
    sampled: torch.Tensor | None = None  # [N] int64 on the device: the next step's placeholders read it
    sampled_host: torch.Tensor | None = None  # its host copy, valid once `done` has fired
    # Logprobs of the sampled tokens, and (request, index of the first prompt token scored, k,
    # logprobs) per request scored this step: on the device until copy_to_host, then on the host.
    logprobs: LogprobsTensors | None = None
    prompt_logprobs: list[tuple[Request, int, int, LogprobsTensors]] = field(default_factory=list)
    done: torch.cuda.Event | None = None  # recorded after the copies; None on a CPU
    # Speculative decoding: row i of `verified` holds verify_requests[i]'s emitted tokens, -1 after the last.
    verify_requests: list[Request] = field(default_factory=list)
    verified: torch.Tensor | None = None  # [M, k + 1] int64, on the device, then on the host after copy_to_host
    verify_logprobs: LogprobsTensors | None = None  # row i * (k + 1) + j: request i's position j
    hidden_states: StepHiddenStates | None = None  # when the model captures features (EAGLE-3)
    deferred: Any = None  # the runner's DeferredSampling until sampling is queued

    def __post_init__(self) -> None:
        self.sample_rows = {request.request_id: row for row, request in enumerate(self.sample_requests)}

    def copy_to_host(self, device: torch.device, sampled_buffer: torch.Tensor | None) -> None:
        """Queue the device-to-host copies of the results and an event after them (no waiting).

        `sampled_buffer` is a pinned buffer for the sampled ids (None: allocate one). On a GPU the
        event is recorded even without results: it also says the step's input copies are done.
        """
        if device.type != "cuda":  # a CPU step is already complete
            self.sampled_host = self.sampled
            return
        if self.verified is not None:
            self.verified = self.verified.to("cpu", non_blocking=True)
        if self.sampled is not None:
            n = self.sampled.shape[0]
            if sampled_buffer is not None and n <= sampled_buffer.shape[0]:
                self.sampled_host = sampled_buffer[:n]
                self.sampled_host.copy_(self.sampled, non_blocking=True)
            else:
                self.sampled_host = self.sampled.to("cpu", non_blocking=True)
        if self.logprobs is not None:
            self.logprobs = _to_host(self.logprobs)
        if self.verify_logprobs is not None:
            self.verify_logprobs = _to_host(self.verify_logprobs)
        self.prompt_logprobs = [(r, first, k, _to_host(t)) for r, first, k, t in self.prompt_logprobs]
        self.done = torch.cuda.Event()
        self.done.record()

    def wait(self) -> None:
        """Block until the host copies are complete (only this step's work, not later steps')."""
        if self.done is not None:
            self.done.synchronize()


def _to_host(tensors: LogprobsTensors) -> LogprobsTensors:
    # A non-blocking copy to the CPU lands in pinned memory, so it does not wait for the device.
    fields = (tensors.token_ids, tensors.logprobs, tensors.ranks)
    return LogprobsTensors(*(t.to("cpu", non_blocking=True) for t in fields))
