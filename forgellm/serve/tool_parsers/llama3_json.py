"""Llama 3.1 / 3.2 JSON tool calls: the whole output is `{"name": ..., "parameters": {...}}` (several joined by
"; " when parallel), optionally after `<|python_tag|>`."""

from __future__ import annotations

import json

from forgellm.serve.tool_parsers.base import ToolCall, ToolParser, call_from_json

_PYTHON_TAG = "<|python_tag|>"


class Llama3JsonToolParser(ToolParser):
    start_marker = '{"name"'
    call_separator = "; "
    arguments_key = "parameters"

    def extract(self, text: str) -> tuple[str | None, list[ToolCall]]:
        body = text.strip().removeprefix(_PYTHON_TAG).strip()
        if not body.startswith("{"):
            return text, []
        decoder, calls, position = json.JSONDecoder(), [], 0
        while position < len(body):
            try:
                obj, end = decoder.raw_decode(body, position)
            except json.JSONDecodeError:
                return text, []
            call = call_from_json(obj, "parameters")
            if call is None:
                return text, []
            calls.append(call)
            position = end
            while position < len(body) and body[position] in " ;\n":
                position += 1
        return None, calls
