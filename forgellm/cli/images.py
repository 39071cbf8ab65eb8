"""`--image PATH` for `forgellm generate` and `forgellm chat`: images shown to a vision-language model."""

from __future__ import annotations

import argparse
from typing import Any

from forgellm.multimodal.chat_content import refuse_images_for_text_only_model, split_images


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
    """The prompt of a conversation rendered with the chat template: token ids, with multi_modal_data when
    it holds images (`images`, paths, go first in the first user message)."""
    if images:
        first = next(i for i, m in enumerate(messages) if m["role"] == "user")
        parts = [{"type": "image", "image": path} for path in images] + [
            {"type": "text", "text": messages[first]["content"]}
        ]
        messages = [*messages[:first], {**messages[first], "content": parts}, *messages[first + 1 :]]
    if not any(isinstance(m.get("content"), list) for m in messages):  # text only: nothing to resolve
        return llm.render_chat(messages)
    rendered, loaded = split_images(messages, llm.engine.media_policy)
    if loaded and llm.engine.input_processor.vision is None:
        refuse_images_for_text_only_model()
    ids = llm.render_chat(rendered)
    return {"prompt_token_ids": ids, "multi_modal_data": {"image": loaded}} if loaded else ids
