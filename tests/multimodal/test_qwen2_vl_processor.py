"""The Qwen2-VL image preprocessor against transformers' own (PIL backend): identical patches and grids for
images of odd sizes, ones scaled up to min_pixels and down to max_pixels, and images with transparency,
grey levels or a palette; both spellings of the pixel bounds in preprocessor_config.json."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from forgellm.errors import InvalidRequestError
from forgellm.multimodal.media import load_image
from forgellm.multimodal.qwen2_vl_processor import Qwen2VLImageProcessor


def reference(**kwargs):  # noqa: ANN003, ANN201 - transformers' processor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(**kwargs)


def random_image(height: int, width: int, mode: str = "RGB", seed: int = 0):  # noqa: ANN201
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode] if mode != "P" else 1
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    if mode == "P":
        image = Image.fromarray(pixels[:, :, 0], "L").convert("P")
        image.info["transparency"] = 7
        return image
    return Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, mode)


def assert_same(images: list, **bounds: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = reference(**bounds)(images, return_tensors="pt")
    ours = Qwen2VLImageProcessor(**bounds).preprocess([load_image(image) for image in images])
    assert ours.grid_thw.tolist() == expected["image_grid_thw"].tolist()
    assert ours.pixel_values.dtype == torch.float32
    assert torch.equal(ours.pixel_values, expected["pixel_values"].float())


@pytest.mark.parametrize(
    ("height", "width"),
    [(224, 224), (37, 91), (500, 301), (13, 17), (1000, 40), (29, 2900)],  # up to min_pixels, down to max_pixels
)
def test_patches_and_grids_equal_transformers(height: int, width: int) -> None:
    assert_same([random_image(height, width)], min_pixels=56 * 56, max_pixels=28 * 28 * 256)


def test_several_images_of_different_sizes_and_modes_in_one_call() -> None:
    images = [random_image(64, 200, "RGBA", 1), random_image(90, 45, "L", 2), random_image(120, 80, "P", 3)]
    assert_same(images, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)


def test_the_default_bounds_and_token_count() -> None:
    processor = Qwen2VLImageProcessor()
    assert_same([random_image(448, 336)])
    grid = processor.preprocess([random_image(448, 336)]).grid_thw[0].tolist()
    assert processor.num_image_tokens(448, 336) == grid[1] * grid[2] // 4 == 16 * 12


def test_bounds_from_either_spelling_of_the_config() -> None:
    old = Qwen2VLImageProcessor.from_dict({"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14})
    new = Qwen2VLImageProcessor.from_dict({"size": {"shortest_edge": 3136, "longest_edge": 12845056}})
    assert old == new == Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056)


def test_an_extreme_aspect_ratio_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidRequestError, match="aspect ratio") as err:
        Qwen2VLImageProcessor().preprocess([random_image(2, 500)], param="messages[0].content[1]")
    assert err.value.param == "messages[0].content[1]"
