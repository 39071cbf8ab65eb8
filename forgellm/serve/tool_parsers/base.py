"""What every tool-call parser does: split generated text into content and calls, and give the structural
tag that makes a model call a tool (tool_choice "required" or a named function)."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ToolCall:
    """One function call as OpenAI's API shows it (`arguments` is JSON text)."""

    name: str
    arguments: str
    id: str = field(default_factory=lambda: "call_" + secrets.token_hex(12))

    def to_openai(self, index: int | None = None) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }
        if index is not None:
            entry["index"] = index
        return entry


def function_parameters(tool: dict[str, Any]) -> dict[str, Any]:
    """A tool's parameters schema (an empty object schema when it takes none)."""
    return tool["function"].get("parameters") or {"type": "object", "properties": {}}


def call_from_json(obj: Any, arguments_key: str = "arguments") -> ToolCall | None:
    """A ToolCall from {"name": ..., "arguments" (or "parameters"): {...}}, or None if it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    arguments = obj.get(arguments_key, obj.get("parameters", obj.get("arguments", {})))
    return ToolCall(obj["name"], arguments if isinstance(arguments, str) else json.dumps(arguments))


class ToolParser:
    """One model family's tool-call syntax."""

    # Text that starts a tool call: streaming holds content back from here on.
    start_marker: str = ""
    # One call is `call_prefix{"name": "<name>", "<arguments_key>": <arguments>}call_suffix`.
    call_prefix: str = ""
    call_suffix: str = ""
    arguments_key: str = "arguments"
    # Several calls: joined by `call_separator` (none: written back to back), the whole list wrapped in
    # `calls_prefix` ... `calls_suffix`.
    call_separator: str = ""
    calls_prefix: str = ""
    calls_suffix: str = ""

    def extract(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """(content outside the calls or None, the calls) of a finished output."""
        raise NotImplementedError

    def call_format(self, tool: dict[str, Any]) -> dict[str, Any]:
        """The structural-tag format of one call of `tool` (xgrammar's "tag" format)."""
        name = json.dumps(tool["function"]["name"])
        return {
            "type": "tag",
            "begin": f'{self.call_prefix}{{"name": {name}, "{self.arguments_key}": ',
            # Whitespace runs bounded as for JSON schemas (structured/backend.py): a small model pads otherwise.
            "content": {"type": "json_schema", "json_schema": function_parameters(tool), "max_whitespace_cnt": 16},
            "end": "}" + self.call_suffix,
        }

    def required_structural_tag(self, tools: list[dict[str, Any]], parallel: bool) -> dict[str, Any]:
        """An xgrammar structural tag whose text is one call (or, if `parallel`, one or more) of `tools`."""
        calls = [self.call_format(tool) for tool in tools]
        one = calls[0] if len(calls) == 1 else {"type": "or", "elements": calls}
        body = one
        if parallel:
            more: dict[str, Any] = one
            if self.call_separator:
                more = {"type": "sequence", "elements": [_const(self.call_separator), one]}
            body = {"type": "sequence", "elements": [one, {"type": "star", "content": more}]}
        if self.calls_prefix or self.calls_suffix:
            body = {"type": "sequence", "elements": [_const(self.calls_prefix), body, _const(self.calls_suffix)]}
        return {"type": "structural_tag", "format": body}


def _const(text: str) -> dict[str, Any]:
    return {"type": "const_string", "value": text}
