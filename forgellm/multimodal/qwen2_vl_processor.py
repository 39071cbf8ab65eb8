"""The Qwen2-VL / Qwen2.5-VL image preprocessor: smart resize, rescale, normalise, patchify.

Matches transformers' Qwen2VLImageProcessor (PIL backend) numerically: each image is resized with PIL's
bicubic filter so both sides are multiples of patch_size x merge_size (28) and its area lies within
[min_pixels, max_pixels], scaled to [0, 1], normalised with the CLIP mean and std, and cut into
patch_size x patch_size patches, each repeated temporal_patch_size times (a still image is a one-step
video), ordered so that every 2 x 2 group the merger fuses is contiguous.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from forgellm.errors import InvalidRequestError
from forgellm.multimodal.media import pil

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_ASPECT_RATIO = 200


@dataclass
class ImageInputs:
    """Preprocessed images: all their patches in one tensor, and each image's (t, h, w) grid in patches."""

    pixel_values: torch.Tensor  # [sum of t*h*w, channels * temporal_patch * patch * patch] float32
    grid_thw: torch.Tensor  # [num_images, 3] int64


@dataclass(frozen=True)
class Qwen2VLImageProcessor:
    """What a checkpoint's preprocessor_config.json says about resizing and patching."""

    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> Qwen2VLImageProcessor:
        """From the checkpoint's preprocessor_config.json (the defaults where it is absent or silent)."""
        path = Path(model_dir) / "preprocessor_config.json"
        if not path.is_file():
            return cls()
        return cls.from_dict(json.loads(path.read_text()))

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> Qwen2VLImageProcessor:
        """Both spellings of the pixel bounds: min_pixels / max_pixels, or size.shortest_edge / longest_edge."""
        size = config.get("size") or {}
        defaults = cls()
        return cls(
            min_pixels=int(config.get("min_pixels") or size.get("shortest_edge") or defaults.min_pixels),
            max_pixels=int(config.get("max_pixels") or size.get("longest_edge") or defaults.max_pixels),
            patch_size=int(config.get("patch_size", defaults.patch_size)),
            temporal_patch_size=int(config.get("temporal_patch_size", defaults.temporal_patch_size)),
            merge_size=int(config.get("merge_size", defaults.merge_size)),
            image_mean=tuple(config.get("image_mean", defaults.image_mean)),
            image_std=tuple(config.get("image_std", defaults.image_std)),
        )

    @property
    def factor(self) -> int:
        """Both resized sides are multiples of this: one merged token covers factor x factor pixels."""
        return self.patch_size * self.merge_size

    def resized_size(self, height: int, width: int, param: str = "image") -> tuple[int, int]:
        """The (height, width) an image is resized to (transformers' smart_resize)."""
        if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
            raise InvalidRequestError(
                f"{param}: aspect ratio {width}x{height} is over {MAX_ASPECT_RATIO}:1; crop or pad the image", param
            )
        factor = self.factor
        h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
        if h_bar * w_bar > self.max_pixels:
            beta = math.sqrt(height * width / self.max_pixels)
            h_bar = max(factor, math.floor(height / beta / factor) * factor)
            w_bar = max(factor, math.floor(width / beta / factor) * factor)
        elif h_bar * w_bar < self.min_pixels:
            beta = math.sqrt(self.min_pixels / (height * width))
            h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
        return h_bar, w_bar

    def num_image_tokens(self, height: int, width: int) -> int:
        """Tokens the language model sees for an image of this size (one per merged 2 x 2 patch group)."""
        h, w = self.resized_size(height, width)
        return (h // self.factor) * (w // self.factor)

    def preprocess(self, images: list[Any], param: str = "image") -> ImageInputs:
        """Patches and grids of RGB PIL images (see forgellm.multimodal.media.load_image)."""
        patches, grids = [], []
        for index, image in enumerate(images):
            frame = self._normalised(image, f"{param}[{index}]" if len(images) > 1 else param)
            image_patches, grid = self._patchify(np.broadcast_to(frame, (self.temporal_patch_size, *frame.shape)))
            patches.append(image_patches)
            grids.append(grid)
        return ImageInputs(torch.from_numpy(np.concatenate(patches)), torch.tensor(grids, dtype=torch.int64))

    def _normalised(self, image: Any, param: str) -> np.ndarray:
        """[3, H', W'] float32: resized, scaled to [0, 1], normalised."""
        height, width = self.resized_size(image.height, image.width, param)
        resized = image.resize((width, height), resample=pil().Resampling.BICUBIC)
        # float64 then float32, mean and std in float32: transformers' rounding, so the pixels match exactly.
        pixels = (np.asarray(resized).astype(np.float64) * (1 / 255)).astype(np.float32)
        mean, std = np.asarray(self.image_mean, dtype=np.float32), np.asarray(self.image_std, dtype=np.float32)
        return ((pixels - mean) / std).transpose(2, 0, 1)

    def _patchify(self, frames: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """[T, C, H, W] (T a multiple of temporal_patch_size) -> [t*h*w, C*temporal*patch*patch], [t, h, w]."""
        num_frames, channels, height, width = frames.shape
        p, m, tp = self.patch_size, self.merge_size, self.temporal_patch_size
        t, h, w = num_frames // tp, height // p, width // p
        patches = frames.reshape(t, tp, channels, h // m, m, p, w // m, m, p)
        # (t, h-groups, w-groups, h-in-group, w-in-group) order; each patch flattened as (C, tp, p, p).
        patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return np.ascontiguousarray(patches).reshape(t * h * w, channels * tp * p * p), [t, h, w]
