"""Loading images from every form a user hands over, and a typed error naming the field for each bad one."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from forgellm.errors import InvalidRequestError
from forgellm.multimodal.media import load_image


def encoded(image, fmt: str = "PNG") -> bytes:  # noqa: ANN001
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def picture():  # noqa: ANN201
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))


def test_every_form_gives_the_same_rgb_pixels(picture, tmp_path) -> None:
    png = encoded(picture)
    path = tmp_path / "picture.png"
    path.write_bytes(png)
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    forms = [picture, np.asarray(picture), str(path), path, png, bytearray(png), url]
    for form in forms:
        image = load_image(form)
        assert image.mode == "RGB" and image.size == (30, 20)
        assert np.array_equal(np.asarray(image), np.asarray(picture)), type(form)


def test_grey_and_transparent_images_become_rgb(picture) -> None:
    grey = load_image(np.zeros((4, 5), dtype=np.uint8))
    assert grey.mode == "RGB" and np.asarray(grey).max() == 0
    clear = np.zeros((4, 5, 4), dtype=np.uint8)  # fully transparent black: white after compositing
    assert np.asarray(load_image(clear)).min() == 255


@pytest.mark.parametrize(
    ("source", "words"),
    [
        (b"not an image at all", "not a readable image"),
        ("data:image/png;base64,@@@", "does not decode"),
        ("data:text/plain;base64,aGk=", "not an image"),
        ("data:image/png,rawdata", "data URL must look like"),
        ("/no/such/file.png", "no image file"),
        (np.zeros((4, 4, 3), dtype=np.float32), "must be uint8"),
        (12345, "expected a PIL image"),
    ],
)
def test_bad_sources_are_typed_errors_naming_the_field(source, words: str) -> None:
    with pytest.raises(InvalidRequestError, match=words) as err:
        load_image(source, param="messages[0].content[1].image_url")
    assert err.value.param == "messages[0].content[1].image_url"


def test_truncated_unsupported_and_oversized_images(picture) -> None:
    png = encoded(picture)
    with pytest.raises(InvalidRequestError, match="corrupt or truncated|not a readable"):
        load_image(png[: len(png) // 2])
    with pytest.raises(InvalidRequestError, match="format ICO is not supported"):
        load_image(encoded(picture, "ICO"))
    with pytest.raises(InvalidRequestError, match=r"30x20 = 600 pixels, over the limit of 500"):
        load_image(png, max_pixels=500)
    assert load_image(png, max_pixels=600).size == (30, 20)
