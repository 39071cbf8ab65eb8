"""`--image PATH` for `forgellm generate` and `forgellm chat`: images shown to a vision-language model."""

from __future__ import annotations

import argparse
from typing import Any


def add_image_arg(parser: argparse.ArgumentParser, where: str) -> None:
    """Add the repeatable --image option; `where` says where the images go."""
    parser.add_argument(
        "--image",
        metavar="PATH",
        action="append",
        default=None,
        help=f"an image file for a vision-language model (Qwen2-VL, Qwen2.5-VL), repeatable; {where}",
    )


def image_chat_prompt(llm: Any, messages: list[dict[str, Any]], images: list[str] | None = None) -> Any:
    """LLM.chat_prompt of a conversation, `images` (paths) first in its first user message."""
    if images:
        first = next(i for i, m in enumerate(messages) if m["role"] == "user")
        parts = [{"type": "image", "image": path} for path in images]
        parts.append({"type": "text", "text": messages[first]["content"]})
        messages = [*messages[:first], {**messages[first], "content": parts}, *messages[first + 1 :]]
    return llm.chat_prompt(messages)
