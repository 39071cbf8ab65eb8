"""Tool-call parsers: the model family's tool-call syntax, read out of generated text and enforced by a
structural tag when a call is required (`--tool-call-parser hermes | llama3_json | mistral`)."""

from __future__ import annotations

from forgellm.serve.tool_parsers.base import ToolCall, ToolParser
from forgellm.serve.tool_parsers.hermes import HermesToolParser
from forgellm.serve.tool_parsers.llama3_json import Llama3JsonToolParser
from forgellm.serve.tool_parsers.mistral import MistralToolParser

TOOL_PARSERS: dict[str, type[ToolParser]] = {
    "hermes": HermesToolParser,
    "llama3_json": Llama3JsonToolParser,
    "mistral": MistralToolParser,
}

__all__ = ["TOOL_PARSERS", "ToolCall", "ToolParser"]
