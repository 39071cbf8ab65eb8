"""PipelinedEngineCore: one batch in flight per pipeline stage, so that no stage idles in steady state.

Under pipeline parallelism a batch passes the stages one after another; with one batch at a time every stage
but one would wait. This core launches a new batch (a different set of requests: the scheduler holds back a
request until its sampled token is back) while the earlier ones are still in the later stages, and collects
the oldest once `depth` batches are in flight. Rank 0 is the first stage: its part of the next batch runs
while the others work on the batches before (distributed/pipeline.py).
"""

from __future__ import annotations

import time
from collections import deque

from forgellm.engine.core import EngineCore, EngineCoreOutput
from forgellm.scheduling.kv_cache import KVCacheManager
from forgellm.scheduling.scheduler import Scheduler
from forgellm.worker.in_flight import InFlightStep
from forgellm.worker.model_runner import ModelRunner


class PipelinedEngineCore(EngineCore):
    """An EngineCore that keeps up to `depth` steps in flight, each over its own share of the requests."""

    def __init__(self, runner: ModelRunner, scheduler: Scheduler, kv_cache: KVCacheManager, depth: int) -> None:
        if depth < 2:
            raise ValueError(f"a pipelined engine keeps >= 2 steps in flight, got {depth}")
        if not scheduler.wait_for_sampled_tokens:
            raise ValueError("a pipelined engine needs a scheduler that waits for sampled tokens")
        super().__init__(runner, scheduler, kv_cache)
        self.depth = depth
        self._steps: deque[InFlightStep] = deque()  # launched, oldest first
        self.max_steps_in_flight = 0  # the most seen at once since start (tests and logs)

    def step(self) -> list[EngineCoreOutput]:
        """Launch a batch of the requests not in flight (about 1/depth of them, so the batches stay even), then,
        with `depth` batches in flight or nothing new to launch, wait for the oldest and return its outputs."""
        started = time.perf_counter()
        scheduler = self.scheduler
        share = -(-(scheduler.num_running + scheduler.num_waiting) // self.depth)
        scheduler_output = scheduler.schedule(max_requests=max(1, share))
        failed: list[EngineCoreOutput] = []
        # Sampling waits for the logits: the last stage sends them when it gets there.
        launched = self._launch(scheduler_output, failed, defer_sampling=True)
        if launched is not None:
            self._steps.append(launched)
            self.max_steps_in_flight = max(self.max_steps_in_flight, len(self._steps))
        if self._steps and (len(self._steps) >= self.depth or scheduler_output.is_empty):
            failed += self._finish_or_fail(self._steps.popleft(), started)
        return failed
