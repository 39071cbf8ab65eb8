"""Mistral tool calls: `[TOOL_CALLS]` then a JSON list of {"name": ..., "arguments": {...}}."""

from __future__ import annotations

import json

from forgellm.serve.tool_parsers.base import ToolCall, ToolParser, call_from_json

_MARKER = "[TOOL_CALLS]"


class MistralToolParser(ToolParser):
    start_marker = _MARKER
    call_separator = ", "
    calls_prefix = _MARKER + "["
    calls_suffix = "]"

    def extract(self, text: str) -> tuple[str | None, list[ToolCall]]:
        head, marker, tail = text.partition(_MARKER)
        if not marker:
            return text, []
        try:
            items = json.loads(tail.strip())
        except json.JSONDecodeError:
            return text, []
        items = items if isinstance(items, list) else [items]
        calls = [call_from_json(item) for item in items]
        if not calls or any(call is None for call in calls):
            return text, []
        return head.strip() or None, calls
