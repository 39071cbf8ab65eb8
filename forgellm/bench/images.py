"""`--image-size WxH` for `forgellm bench latency|throughput`: one random image per request (vision-language
models). Each image is different (its own seed), so neither the encoder cache nor the prefix cache
shortcuts any of them."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import numpy as np

from forgellm.errors import ConfigError

if TYPE_CHECKING:  # the CLI builds its parser without loading torch
    from forgellm.engine.llm_engine import LLMEngine


def parse_image_size(text: str) -> tuple[int, int]:
    """'896x896' -> (width, height)."""
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or int(width) < 1 or int(height) < 1:
        raise argparse.ArgumentTypeError(f"an image size is WIDTHxHEIGHT in pixels, e.g. 896x896; got {text!r}")
    return int(width), int(height)


def add_image_size_arg(group: argparse._ArgumentGroup) -> None:
    """Add --image-size to a benchmark's argument group."""
    group.add_argument(
        "--image-size",
        metavar="WxH",
        type=parse_image_size,
        default=None,
        help="one random image of W x H pixels after each prompt's text (vision-language models)",
    )


def image_prompt(engine: LLMEngine, token_ids: list[int], size: tuple[int, int], seed: int) -> dict[str, Any]:
    """Random text ids, then <|vision_start|><|image_pad|><|vision_end|>, with a random image of `size`."""
    vision = engine.input_processor.vision
    if vision is None:
        raise ConfigError("--image-size needs a vision-language model (e.g. --model-config qwen2.5-vl-7b)")
    raw = engine.arch.raw
    frame = [raw.get("vision_start_token_id"), vision.image_token_id, raw.get("vision_end_token_id")]
    frame = [t for t in frame if isinstance(t, int)]
    # Random text must not hold vision tokens of its own (a stray placeholder would need an image).
    text = [0 if t in frame or t == vision.video_token_id else t for t in token_ids]
    width, height = size
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return {"prompt_token_ids": text + frame, "multi_modal_data": {"image": [pixels]}}
