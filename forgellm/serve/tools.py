"""Tool calling in chat completions: checking `tools` and `tool_choice`, forcing a call with a structural tag
(tool_choice "required" or a named function: enforced by the grammar, not hoped for), and turning the
generated text into OpenAI `tool_calls`, whole or streamed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from forgellm.errors import InvalidRequestError
from forgellm.serve.tool_parsers import ToolCall, ToolParser

# JSON schemas of the request fields, as the server documents (and checks) them.
TOOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "function"],
    "properties": {
        "type": {"enum": ["function"]},
        "function": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "description": {"type": "string"},
                "parameters": {"type": "object"},
                "strict": {"type": ["boolean", "null"]},
            },
        },
    },
}
NAMED_CHOICE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "function"],
    "properties": {
        "type": {"enum": ["function"]},
        "function": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
    },
}
TOOL_CHOICE_SCHEMA: dict[str, Any] = {"anyOf": [{"enum": ["none", "auto", "required"]}, NAMED_CHOICE_SCHEMA]}


def check_tools(tools: list[Any] | None, tool_choice: Any) -> None:
    """400s naming the field for tools or a tool_choice the server cannot honour."""
    for i, tool in enumerate(tools or []):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise InvalidRequestError('each tool must be {"type": "function", "function": {...}}', f"tools.{i}")
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise InvalidRequestError("each tool's function needs a name", f"tools.{i}.function.name")
        if not isinstance(function.get("parameters", {}), dict):
            raise InvalidRequestError("a function's parameters must be a JSON schema object", f"tools.{i}.function")
    if tool_choice is None or tool_choice in ("none", "auto"):
        return
    if tool_choice == "required" or _named(tool_choice) is not None:
        if not tools:
            raise InvalidRequestError("tool_choice requires a call, but no tools were given", "tool_choice")
        name = _named(tool_choice)
        if name is not None and name not in {t["function"]["name"] for t in tools}:
            raise InvalidRequestError(f"tool_choice names {name!r}, which is not among the tools", "tool_choice")
        return
    raise InvalidRequestError(
        'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}',
        "tool_choice",
    )


def _named(tool_choice: Any) -> str | None:
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        function = tool_choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return function["name"]
    return None


@dataclass
class ToolCalling:
    """One request's tools, its tool_choice and the parser of the served model's syntax."""

    parser: ToolParser
    tools: list[dict[str, Any]]
    tool_choice: Any = "auto"
    parallel: bool = True

    @property
    def active(self) -> bool:
        """Whether the output may hold calls (tools given, tool_choice not "none")."""
        return bool(self.tools) and self.tool_choice != "none"

    def constraint(self) -> dict[str, Any] | None:
        """The structured-output constraint that forces a call (tool_choice required / named), else None."""
        name = _named(self.tool_choice)
        if self.tool_choice != "required" and name is None:
            return None
        tools = [t for t in self.tools if name is None or t["function"]["name"] == name]
        return {"structural_tag": self.parser.required_structural_tag(tools, self.parallel and name is None)}

    def message(self, text: str, finish_reason: str | None) -> tuple[dict[str, Any], str | None]:
        """The assistant message of a finished output, and its finish reason ("tool_calls" when it calls)."""
        if not self.active:
            return {"role": "assistant", "content": text}, finish_reason
        content, calls = self.parser.extract(text)
        if not calls:
            return {"role": "assistant", "content": text}, finish_reason
        if not self.parallel:
            calls = calls[:1]
        message = {"role": "assistant", "content": content, "tool_calls": [c.to_openai() for c in calls]}
        return message, "tool_calls" if finish_reason == "stop" else finish_reason

    def streamer(self) -> ToolCallStream:
        return ToolCallStream(self)


@dataclass
class ToolCallStream:
    """One streamed choice: content passes through until the tool-call syntax may have begun; from there the
    text is held, and at the end it becomes `tool_calls` deltas (one per call, arguments whole)."""

    calling: ToolCalling
    text: str = ""
    sent: int = 0  # characters of `text` already sent as content
    calls: list[ToolCall] = field(default_factory=list)

    def feed(self, delta: str) -> str:
        """Content to send now for `delta`."""
        self.text += delta
        marker = self.calling.parser.start_marker
        held = self.text.find(marker, max(self.sent - len(marker), 0))
        if held < 0:  # keep back any tail that could be the start of the marker
            held = len(self.text)
            for size in range(min(len(marker) - 1, len(self.text)), 0, -1):
                if marker.startswith(self.text[-size:]):
                    held = len(self.text) - size
                    break
        out, self.sent = self.text[self.sent : max(held, self.sent)], max(held, self.sent)
        return out

    def finish(self, finish_reason: str | None) -> tuple[str, list[dict[str, Any]], str | None]:
        """(content still to send, tool_call deltas, finish reason) once the choice has ended."""
        message, reason = self.calling.message(self.text, finish_reason)
        calls = message.get("tool_calls") or []
        if not calls:
            return self.text[self.sent :], [], reason
        content = message.get("content") or ""
        rest = content[self.sent :] if content.startswith(self.text[: self.sent]) else ""
        deltas = [{**call, "index": i} for i, call in enumerate(calls)]
        return rest, deltas, reason
