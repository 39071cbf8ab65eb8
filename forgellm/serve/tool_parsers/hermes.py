"""Hermes / Qwen2.5 / Qwen3 tool calls: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>` blocks."""

from __future__ import annotations

import json
import re

from forgellm.serve.tool_parsers.base import ToolCall, ToolParser, call_from_json

_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


class HermesToolParser(ToolParser):
    start_marker = "<tool_call>"
    call_prefix = "<tool_call>\n"
    call_suffix = "\n</tool_call>"

    def extract(self, text: str) -> tuple[str | None, list[ToolCall]]:
        calls = []
        for body in _BLOCK.findall(text):
            try:
                call = call_from_json(json.loads(body))
            except json.JSONDecodeError:
                call = None
            if call is None:  # not a call after all: leave the text as content
                return text, []
            calls.append(call)
        if not calls:
            return text, []
        content = _BLOCK.sub("", text).strip()
        return content or None, calls
