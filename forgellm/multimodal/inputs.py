"""A request's images, ready for the engine: preprocessed patches, where their tokens sit, content hashes.

VisionPromptBuilder turns a prompt plus `multi_modal_data` into token ids where each image's one
placeholder token (`<|image_pad|>` in Qwen's chat format) is expanded to the image's tokens, the M-RoPE
positions of the whole prompt, and one VisionItem per image. The content hash names the image wherever it
is needed: the encoder cache's key, and part of the prefix-cache hash of every KV block its tokens touch,
so two requests with the same image share KV and two different images never alias.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from forgellm.errors import InvalidRequestError, ModelLoadError
from forgellm.hf.config_types import ModelArchConfig
from forgellm.multimodal.media import load_image
from forgellm.multimodal.mrope import VisionSpan, mrope_positions
from forgellm.multimodal.qwen2_vl_processor import Qwen2VLImageProcessor

DEFAULT_LIMIT_PER_PROMPT = 8


@dataclass(frozen=True, eq=False)
class VisionItem:
    """One image of a request: its patches and grid, its placeholder tokens' place, its content hash."""

    pixel_values: torch.Tensor  # [t*h*w, C * temporal_patch * patch * patch] float32, on the host
    grid_thw: tuple[int, int, int]
    offset: int  # index of its first placeholder token in the prompt
    num_tokens: int
    content_hash: int

    @property
    def end(self) -> int:
        return self.offset + self.num_tokens


@dataclass(frozen=True, eq=False)
class MultimodalPrompt:
    """What a request with images carries besides its tokens."""

    items: tuple[VisionItem, ...]
    positions: torch.Tensor  # [3, prompt length] int64 M-RoPE positions
    position_delta: int  # tokens after the prompt sit at index + delta on all three streams

    def hash_spans(self) -> list[tuple[int, int, int]]:
        """(first token, end, content hash) of each image, for the prefix-cache block hashes."""
        return [(item.offset, item.end, item.content_hash) for item in self.items]

    def rope_positions(self, start: int, count: int) -> tuple[int, torch.Tensor | None]:
        """Rotary positions of tokens start .. start+count-1: (offset added to their indices, None) past the
        prompt, where the three streams agree, else (0, their [3, count] positions)."""
        length = self.positions.shape[1]
        if start >= length:
            return self.position_delta, None
        rows = [self.positions[:, start : min(start + count, length)]]
        if start + count > length:  # a recompute after preemption runs output tokens as prompt
            rows.append(torch.arange(length, start + count).expand(3, -1) + self.position_delta)
        return 0, torch.cat(rows, dim=1)

    def overlaps(self, start: int, count: int) -> list[tuple[VisionItem, int, int]]:
        """(image, its first row, its end row) of the images whose tokens lie in start .. start+count-1."""
        end = start + count
        return [
            (item, max(start, item.offset) - item.offset, min(end, item.end) - item.offset)
            for item in self.items
            if item.offset < end and item.end > start
        ]


class VisionPromptBuilder:
    """Expands a Qwen2-VL family prompt's image placeholders and preprocesses its images."""

    def __init__(
        self,
        processor: Qwen2VLImageProcessor,
        image_token_id: int,
        limit_per_prompt: int = DEFAULT_LIMIT_PER_PROMPT,
        max_image_pixels: int | None = None,
    ) -> None:
        self.processor = processor
        self.image_token_id = image_token_id
        self.limit_per_prompt = limit_per_prompt
        self.max_image_pixels = max_image_pixels

    def build(self, token_ids: list[int], data: Mapping[str, Any]) -> tuple[list[int], MultimodalPrompt | None]:
        """(token ids with each image's placeholder expanded, the images) for `multi_modal_data` `data`."""
        unknown = sorted(set(data) - {"image"})
        if unknown:
            message = "video input is not implemented yet" if "video" in unknown else f"unknown keys {unknown}"
            raise InvalidRequestError(f"multi_modal_data: {message}; give {{'image': [...]}}", "multi_modal_data")
        images = data.get("image")
        if images is None:
            return token_ids, None
        if not isinstance(images, Sequence) or isinstance(images, (str, bytes, bytearray)):
            images = [images]
        if len(images) > self.limit_per_prompt:
            raise InvalidRequestError(
                f"{len(images)} images in one prompt, over the limit of {self.limit_per_prompt} "
                "(--limit-mm-per-prompt)",
                "multi_modal_data.image",
            )
        placeholders = [i for i, token in enumerate(token_ids) if token == self.image_token_id]
        if len(placeholders) != len(images):
            raise InvalidRequestError(
                f"the prompt has {len(placeholders)} image placeholder token(s) (id {self.image_token_id}, "
                f"<|image_pad|> in the chat template) for {len(images)} image(s); give one placeholder per image",
                "multi_modal_data.image",
            )
        loaded = []
        for index, image in enumerate(images):
            param = f"multi_modal_data.image[{index}]"
            limit = {} if self.max_image_pixels is None else {"max_pixels": self.max_image_pixels}
            loaded.append(self.processor.preprocess([load_image(image, param, **limit)], param))
        expanded: list[int] = []
        items, spans, previous = [], [], 0
        merge = self.processor.merge_size
        for position, inputs in zip(placeholders, loaded):
            expanded += token_ids[previous:position]
            grid = tuple(int(v) for v in inputs.grid_thw[0])
            span = VisionSpan(len(expanded), grid)
            count = span.num_tokens(merge)
            items.append(
                VisionItem(inputs.pixel_values, grid, len(expanded), count, _content_hash(inputs.pixel_values, grid))
            )
            spans.append(span)
            expanded += [self.image_token_id] * count
            previous = position + 1
        expanded += token_ids[previous:]
        positions, delta = mrope_positions(len(expanded), spans, merge)
        return expanded, MultimodalPrompt(tuple(items), positions, delta)


def _content_hash(pixel_values: torch.Tensor, grid: tuple[int, int, int]) -> int:
    """SHA-256 of the preprocessed pixels and grid: equal images (after preprocessing) share it."""
    digest = hashlib.sha256(repr(grid).encode())
    digest.update(pixel_values.contiguous().numpy().tobytes())
    return int.from_bytes(digest.digest()[:16], "little")


def vision_prompt_builder(
    model_dir: str | Path, arch: ModelArchConfig, limit_per_prompt: int = DEFAULT_LIMIT_PER_PROMPT
) -> VisionPromptBuilder | None:
    """The image handling of a vision-language checkpoint (config.json has a vision_config), else None."""
    vision = arch.raw.get("vision_config")
    if not isinstance(vision, dict):
        return None
    image_token_id = arch.raw.get("image_token_id")
    if not isinstance(image_token_id, int):
        raise ModelLoadError(f"{model_dir}: a vision-language config.json needs an integer image_token_id")
    processor = Qwen2VLImageProcessor.from_dir(model_dir)
    merge = int(vision.get("spatial_merge_size", 2))
    if processor.merge_size != merge:
        raise ModelLoadError(
            f"{model_dir}: preprocessor_config.json merge_size {processor.merge_size} differs from the vision "
            f"tower's spatial_merge_size {merge}"
        )
    return VisionPromptBuilder(processor, image_token_id, limit_per_prompt)
