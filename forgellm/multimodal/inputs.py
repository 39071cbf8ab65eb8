"""A request's images, ready for the engine: preprocessed patches, where their tokens sit, content hashes.

VisionPromptBuilder turns a prompt plus `multi_modal_data` into token ids where each image's one
placeholder token (`<|image_pad|>` in Qwen's chat format) is expanded to the image's tokens, the M-RoPE
positions of the whole prompt, and one VisionItem per image. The content hash names the image wherever it
is needed: the encoder cache's key, and part of the prefix-cache hash of every KV block its tokens touch,
so two requests with the same image share KV and two different images never alias.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from forgellm.errors import InvalidRequestError, ModelLoadError
from forgellm.hf.config_types import ModelArchConfig
from forgellm.multimodal.media import load_image
from forgellm.multimodal.mrope import VisionSpan, mrope_positions
from forgellm.multimodal.qwen2_vl_processor import ImageInputs, Qwen2VLImageProcessor

DEFAULT_LIMIT_PER_PROMPT = 8
DEFAULT_VIDEO_FPS = 2.0  # frames per second of a video given as bare frames (qwen-vl-utils' default)


@dataclass(frozen=True, eq=False)
class VisionItem:
    """One image or video of a request: its patches and grid, its placeholder tokens' place, its content hash."""

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


@dataclass(frozen=True)
class _Media:
    """One image or video, preprocessed, before its place in the prompt is known."""

    inputs: ImageInputs
    time_interval: float  # M-RoPE temporal step per temporal patch


class VisionPromptBuilder:
    """Expands a Qwen2-VL family prompt's image and video placeholders and preprocesses the media."""

    def __init__(
        self,
        processor: Qwen2VLImageProcessor,
        image_token_id: int,
        limit_per_prompt: int = DEFAULT_LIMIT_PER_PROMPT,
        max_image_pixels: int | None = None,
        video_token_id: int | None = None,
        tokens_per_second: float | None = None,
    ) -> None:
        """`tokens_per_second`: Qwen2.5-VL's temporal position step per second of video (None: Qwen2-VL, one
        step per temporal patch)."""
        self.processor = processor
        self.image_token_id = image_token_id
        self.video_token_id = video_token_id
        self.limit_per_prompt = limit_per_prompt
        self.max_image_pixels = max_image_pixels
        self.tokens_per_second = tokens_per_second

    def build(self, token_ids: list[int], data: Mapping[str, Any]) -> tuple[list[int], MultimodalPrompt | None]:
        """(token ids with each image's and video's placeholder expanded, the media) for `multi_modal_data`.

        data["image"]: images (or one); data["video"]: videos (or one), each a list of frames or
        {"frames": [...], "fps": frames per second (default 2)}."""
        unknown = sorted(set(data) - {"image", "video"})
        if unknown:
            raise InvalidRequestError(
                f"multi_modal_data: unknown keys {unknown}; give {{'image': [...], 'video': [...]}}", "multi_modal_data"
            )
        images, videos = _as_list(data.get("image"), "image"), _as_list(data.get("video"), "video")
        if videos and self.video_token_id is None:
            raise InvalidRequestError("this model takes no video", "multi_modal_data.video")
        if len(images) + len(videos) > self.limit_per_prompt:
            raise InvalidRequestError(
                f"{len(images) + len(videos)} images and videos in one prompt, over the limit of "
                f"{self.limit_per_prompt} (--limit-mm-per-prompt)",
                "multi_modal_data.image" if images else "multi_modal_data.video",
            )
        media = {
            self.image_token_id: iter([self._image(image, index) for index, image in enumerate(images)]),
            self.video_token_id: iter([self._video(video, index) for index, video in enumerate(videos)]),
        }
        for kind, token, given in (("image", self.image_token_id, images), ("video", self.video_token_id, videos)):
            count = token_ids.count(token) if token is not None else 0
            if count != len(given):
                raise InvalidRequestError(
                    f"the prompt has {count} {kind} placeholder token(s) (id {token}, <|{kind}_pad|> in the chat "
                    f"template) for {len(given)} {kind}(s); give one placeholder per {kind}",
                    f"multi_modal_data.{kind}",
                )
        if not images and not videos:
            return token_ids, None
        expanded: list[int] = []
        items, spans = [], []
        merge = self.processor.merge_size
        for token in token_ids:
            source = media.get(token) if token in (self.image_token_id, self.video_token_id) else None
            if source is None:
                expanded.append(token)
                continue
            item = next(source)
            grid = tuple(int(v) for v in item.inputs.grid_thw[0])
            span = VisionSpan(len(expanded), grid, item.time_interval)
            count = span.num_tokens(merge)
            content_hash = int.from_bytes(item.inputs.digests[0][:16], "little")
            items.append(VisionItem(item.inputs.pixel_values, grid, len(expanded), count, content_hash))
            spans.append(span)
            expanded += [token] * count
        positions, delta = mrope_positions(len(expanded), spans, merge)
        return expanded, MultimodalPrompt(tuple(items), positions, delta)

    def _image(self, image: Any, index: int) -> _Media:
        param = f"multi_modal_data.image[{index}]"
        limit = {} if self.max_image_pixels is None else {"max_pixels": self.max_image_pixels}
        return _Media(self.processor.preprocess([load_image(image, param, **limit)], param), 1.0)

    def _video(self, video: Any, index: int) -> _Media:
        param = f"multi_modal_data.video[{index}]"
        frames, fps = (
            (video.get("frames"), video.get("fps", DEFAULT_VIDEO_FPS))
            if isinstance(video, Mapping)
            else (video, DEFAULT_VIDEO_FPS)
        )
        if not isinstance(frames, Sequence) or isinstance(frames, (str, bytes)) or not frames:
            raise InvalidRequestError(
                f"{param}: a video is a non-empty list of frames (or {{'frames': [...], 'fps': x}})", param
            )
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
            raise InvalidRequestError(f"{param}: fps must be a positive number, got {fps!r}", param)
        loaded = [load_image(frame, f"{param}.frames[{i}]") for i, frame in enumerate(frames)]
        inputs = self.processor.preprocess_video(loaded, param)
        # Qwen2.5-VL spaces temporal positions by time: tokens_per_second x seconds per temporal patch.
        seconds_per_patch = self.processor.temporal_patch_size / fps
        interval = 1.0 if self.tokens_per_second is None else self.tokens_per_second * seconds_per_patch
        return _Media(inputs, interval)


def _as_list(value: Any, kind: str) -> list[Any]:
    """One item or a list of them (a video's own frames list counts as one video only inside a list)."""
    if value is None:
        return []
    if kind == "image" and (not isinstance(value, Sequence) or isinstance(value, (str, bytes, bytearray))):
        return [value]
    if kind == "video" and isinstance(value, Mapping):
        return [value]
    return list(value)


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
    video_token_id = arch.raw.get("video_token_id")
    tokens_per_second = vision.get("tokens_per_second") if arch.model_type == "qwen2_5_vl" else None
    return VisionPromptBuilder(
        processor,
        image_token_id,
        limit_per_prompt,
        video_token_id=video_token_id if isinstance(video_token_id, int) else None,
        tokens_per_second=tokens_per_second,
    )
