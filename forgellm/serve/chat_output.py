"""How a chat output becomes an assistant message: reasoning split off into `reasoning_content`, tool calls
read out of the rest; whole, or delta by delta while streaming."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from forgellm.serve.reasoning_parsers import ReasoningParser, ReasoningStream
from forgellm.serve.tools import ToolCalling, ToolCallStream


@dataclass
class ChatOutput:
    """The request's tool calling and the server's reasoning parser (None: no reasoning to split off)."""

    calling: ToolCalling
    reasoning: ReasoningParser | None = None

    def message(self, text: str, finish_reason: str | None) -> tuple[dict[str, Any], str | None]:
        """The assistant message of a finished output and its finish reason."""
        reasoning, content = self.reasoning.split(text) if self.reasoning is not None else (None, text)
        message, finish_reason = self.calling.message(content, finish_reason)
        if reasoning is not None:
            message["reasoning_content"] = reasoning
        return message, finish_reason

    def streamer(self) -> ChatOutputStream:
        return ChatOutputStream(
            self.reasoning.streamer() if self.reasoning is not None else None,
            self.calling.streamer() if self.calling.active else None,
        )


@dataclass
class ChatOutputStream:
    """One streamed choice."""

    reasoning: ReasoningStream | None
    calls: ToolCallStream | None

    def delta(self, text: str, finish_reason: str | None) -> tuple[dict[str, Any], str | None]:
        """The chunk delta for new text `text` (and the finish reason, once the choice ends)."""
        thought = ""
        if self.reasoning is not None:
            thought, text = self.reasoning.feed(text)
            if finish_reason is not None:
                more_thought, more_text = self.reasoning.finish()
                thought, text = thought + more_thought, text + more_text
        tool_calls: list[dict[str, Any]] = []
        if self.calls is not None:
            text = self.calls.feed(text)
            if finish_reason is not None:
                rest, tool_calls, finish_reason = self.calls.finish(finish_reason)
                text += rest
        delta: dict[str, Any] = {}
        if thought:
            delta["reasoning_content"] = thought
        if text:
            delta["content"] = text
        if tool_calls:
            delta["tool_calls"] = tool_calls
        return delta, finish_reason
