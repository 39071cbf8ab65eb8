"""EngineLoop: steps an LLMEngine for an asynchronous front-end (AsyncLLM's thread, ProcessAsyncLLM's child).

Between steps it applies the commands that arrived (add, abort, stop), then steps and publishes the
step's outputs with the engine's stats. Requests are named by wire ids that the front-end hands out
(one per add, never reused), so no caller-chosen id can reach another request and a late output of
an aborted request can never land in a newer request that reuses its id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from forgellm.engine.core import EngineStats
from forgellm.engine.input_processor import ProcessedPrompt
from forgellm.engine.llm_engine import LLMEngine
from forgellm.outputs import RequestOutput

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AddCommand:
    """Queue a validated request under `wire_id`."""

    wire_id: str
    prompt: ProcessedPrompt
    priority: int = 0
    stream: bool = True
    delta: bool = False


@dataclass(frozen=True)
class AbortCommand:
    """Abort the request `wire_id`; its final output (finish_reason "abort") is published."""

    wire_id: str


@dataclass(frozen=True)
class StopCommand:
    """End the loop."""


Command = AddCommand | AbortCommand | StopCommand


@dataclass
class StepReport:
    """What the loop publishes after each iteration."""

    outputs: list[RequestOutput]
    stats: EngineStats
    sequences_consumed: int  # sequences (n per add) taken from the commands since start
    # (wire id, error) of adds the engine refused: the front-end fails those requests alone.
    refused: list[tuple[str, Exception]] = field(default_factory=list)


class EngineLoop:
    """Runs `engine` until a StopCommand: receive commands, apply them, step, publish.

    `receive(block)` returns the commands that arrived (waiting for one when `block`); `publish`
    takes each iteration's StepReport. An exception out of `run` means the engine cannot go on:
    a failed step or a bad request never raises here (EngineCore and the adds contain them).
    """

    def __init__(
        self,
        engine: LLMEngine,
        receive: Callable[[bool], list[Command]],
        publish: Callable[[StepReport], None],
    ) -> None:
        self.engine = engine
        self.receive = receive
        self.publish = publish
        self.sequences_consumed = 0

    def run(self) -> None:
        engine = self.engine
        while True:
            # Block for work only when idle; while requests run, just take what has arrived.
            busy = engine.has_unfinished_requests()
            commands = self.receive(not busy)
            outputs: list[RequestOutput] = []
            refused: list[tuple[str, Exception]] = []
            for command in commands:
                if isinstance(command, StopCommand):
                    return
                if isinstance(command, AbortCommand):
                    final = engine.abort_request(command.wire_id)
                    if final is not None:
                        outputs.append(final)
                    continue
                self.sequences_consumed += command.prompt.sampling_params.n
                try:
                    engine.add_request(
                        command.wire_id,
                        command.prompt,
                        priority=command.priority,
                        stream=command.stream,
                        delta=command.delta,
                    )
                except Exception as exc:  # a bad request fails alone; the engine is fine
                    logger.warning("the engine refused request %s: %s", command.wire_id, exc)
                    refused.append((command.wire_id, exc))
            # An empty step also lets the engine release state of requests aborted just now.
            if busy or commands:
                outputs.extend(engine.step())
            self.publish(StepReport(outputs, engine.stats(), self.sequences_consumed, refused))
