"""The Qwen2-VL / Qwen2.5-VL image preprocessor: smart resize, rescale, normalise, patchify.

Matches transformers' Qwen2VLImageProcessor (PIL backend) numerically: each image is resized with PIL's
bicubic filter so both sides are multiples of patch_size x merge_size (28) and its area lies within
[min_pixels, max_pixels], scaled to [0, 1], normalised with the CLIP mean and std, and cut into
patch_size x patch_size patches, each repeated temporal_patch_size times (a still image is a one-step
video), ordered so that every 2 x 2 group the merger fuses is contiguous.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
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
    # Per image (or video): SHA-256 of its resized 8-bit pixels, which with the grid determine its patches
    # (a quarter of the bytes of hashing the float32 patches).
    digests: tuple[bytes, ...] = ()


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
    # Per-frame pixel bounds of videos (transformers' Qwen2-VL video processor defaults).
    video_min_pixels: int = 128 * 28 * 28
    video_max_pixels: int = 28 * 28 * 768

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> Qwen2VLImageProcessor:
        """From the checkpoint's preprocessor_config.json (the defaults where it is absent or silent)."""
        path = Path(model_dir) / "preprocessor_config.json"
        processor = cls.from_dict(json.loads(path.read_text())) if path.is_file() else cls()
        video_path = Path(model_dir) / "video_preprocessor_config.json"  # transformers 5 keeps videos apart
        if video_path.is_file():
            video = cls.from_dict({**json.loads(video_path.read_text())}, defaults=(128 * 28 * 28, 28 * 28 * 768))
            processor = replace(processor, video_min_pixels=video.min_pixels, video_max_pixels=video.max_pixels)
        return processor

    @classmethod
    def from_dict(cls, config: dict[str, Any], defaults: tuple[int, int] | None = None) -> Qwen2VLImageProcessor:
        """Both spellings of the pixel bounds: min_pixels / max_pixels, or size.shortest_edge / longest_edge
        (`defaults`: the (min, max) bounds where the config states none)."""
        size = config.get("size") or {}
        base = cls()
        low, high = defaults or (base.min_pixels, base.max_pixels)
        return cls(
            min_pixels=int(config.get("min_pixels") or size.get("shortest_edge") or low),
            max_pixels=int(config.get("max_pixels") or size.get("longest_edge") or high),
            patch_size=int(config.get("patch_size", base.patch_size)),
            temporal_patch_size=int(config.get("temporal_patch_size", base.temporal_patch_size)),
            merge_size=int(config.get("merge_size", base.merge_size)),
            image_mean=tuple(config.get("image_mean", base.image_mean)),
            image_std=tuple(config.get("image_std", base.image_std)),
        )

    @property
    def factor(self) -> int:
        """Both resized sides are multiples of this: one merged token covers factor x factor pixels."""
        return self.patch_size * self.merge_size

    def resized_size(
        self, height: int, width: int, param: str = "image", bounds: tuple[int, int] | None = None
    ) -> tuple[int, int]:
        """The (height, width) an image is resized to (transformers' smart_resize) within `bounds` (min, max
        pixels; default the image bounds)."""
        min_pixels, max_pixels = bounds or (self.min_pixels, self.max_pixels)
        if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
            raise InvalidRequestError(
                f"{param}: aspect ratio {width}x{height} is over {MAX_ASPECT_RATIO}:1; crop or pad the image", param
            )
        factor = self.factor
        h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
        if h_bar * w_bar > max_pixels:
            beta = math.sqrt(height * width / max_pixels)
            h_bar = max(factor, math.floor(height / beta / factor) * factor)
            w_bar = max(factor, math.floor(width / beta / factor) * factor)
        elif h_bar * w_bar < min_pixels:
            beta = math.sqrt(min_pixels / (height * width))
            h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
        return h_bar, w_bar

    def num_image_tokens(self, height: int, width: int) -> int:
        """Tokens the language model sees for an image of this size (one per merged 2 x 2 patch group)."""
        h, w = self.resized_size(height, width)
        return (h // self.factor) * (w // self.factor)

    def preprocess(self, images: list[Any], param: str = "image") -> ImageInputs:
        """Patches and grids of RGB PIL images (see forgellm.multimodal.media.load_image)."""
        patches, grids, digests = [], [], []
        for index, image in enumerate(images):
            resized = self._resized(image, f"{param}[{index}]" if len(images) > 1 else param)
            frame = self._normalised(resized)
            image_patches, grid = self._patchify(np.broadcast_to(frame, (self.temporal_patch_size, *frame.shape)))
            patches.append(image_patches)
            grids.append(grid)
            digests.append(_digest([resized], grid))
        pixel_values = torch.from_numpy(np.concatenate(patches) if len(patches) > 1 else patches[0])
        return ImageInputs(pixel_values, torch.tensor(grids, dtype=torch.int64), tuple(digests))

    def preprocess_video(self, frames: list[Any], param: str = "video") -> ImageInputs:
        """Patches and grid of one video given as RGB PIL frames of one size: each frame resized within the video
        bounds, the frame count padded to a multiple of temporal_patch_size by repeating the last frame.

        Resizing is PIL's bicubic, as for images; transformers' video processor resizes with torchvision,
        whose bicubic differs in the last bits, so video pixels are close to transformers', not identical."""
        if not frames:
            raise InvalidRequestError(f"{param}: a video needs at least one frame", param)
        if len({frame.size for frame in frames}) > 1:
            raise InvalidRequestError(f"{param}: all frames of a video must have one size", param)
        bounds = (self.video_min_pixels, self.video_max_pixels)
        resized = [self._resized(frame, param, bounds) for frame in frames]
        stack = np.stack([self._normalised(frame) for frame in resized])
        if pad := -len(frames) % self.temporal_patch_size:
            stack = np.concatenate([stack, np.repeat(stack[-1:], pad, axis=0)])
        patches, grid = self._patchify(stack)
        return ImageInputs(
            torch.from_numpy(patches), torch.tensor([grid], dtype=torch.int64), (_digest(resized, grid),)
        )

    def _resized(self, image: Any, param: str, bounds: tuple[int, int] | None = None) -> np.ndarray:
        """[H', W', 3] uint8: the image resized to its smart size (PIL's bicubic)."""
        height, width = self.resized_size(image.height, image.width, param, bounds)
        return np.asarray(image.resize((width, height), resample=pil().Resampling.BICUBIC))

    def _normalised(self, pixels: np.ndarray) -> np.ndarray:
        """[3, H, W] float32 of [H, W, 3] uint8 pixels: scaled to [0, 1], normalised, channels first."""
        lut = self._lookup_table()
        planes = np.ascontiguousarray(pixels.transpose(2, 0, 1))  # contiguous planes: a fast take
        return np.stack([np.take(lut[c], plane) for c, plane in enumerate(planes)])

    def _lookup_table(self) -> np.ndarray:
        """[3, 256] float32: each channel's normalised value of each 8-bit level. Computed as transformers
        computes every pixel (float64 scaling, then float32 mean and std), so a table look-up equals it exactly
        at a fraction of the arithmetic."""
        levels = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
        mean, std = np.asarray(self.image_mean, dtype=np.float32), np.asarray(self.image_std, dtype=np.float32)
        return (levels[None, :] - mean[:, None]) / std[:, None]

    def _patchify(self, frames: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """[T, C, H, W] (T a multiple of temporal_patch_size) -> [t*h*w, C*temporal*patch*patch], [t, h, w]."""
        num_frames, channels, height, width = frames.shape
        p, m, tp = self.patch_size, self.merge_size, self.temporal_patch_size
        t, h, w = num_frames // tp, height // p, width // p
        patches = frames.reshape(t, tp, channels, h // m, m, p, w // m, m, p)
        # (t, h-groups, w-groups, h-in-group, w-in-group) order; each patch flattened as (C, tp, p, p).
        patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return np.ascontiguousarray(patches).reshape(t * h * w, channels * tp * p * p), [t, h, w]


def _digest(frames: list[np.ndarray], grid: list[int]) -> bytes:
    """SHA-256 of 8-bit frames and their patch grid."""
    digest = hashlib.sha256(repr(grid).encode())
    for frame in frames:
        digest.update(np.ascontiguousarray(frame).data)
    return digest.digest()
