"""Loading images from what users hand over: PIL images, numpy arrays, file paths, raw bytes, data URLs.

Every failure is an InvalidRequestError naming the request field (`param`) and what to change, so the
server answers 400 and the engine never sees a broken image. Pillow is imported lazily: it is the
`vision` extra, and text-only installs never need it.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any

import numpy as np

from forgellm.errors import InvalidRequestError

# Pixels an image may have before it is decoded: above this it is refused rather than resized (a 16k x 16k
# PNG of a few kilobytes would otherwise take gigabytes to decode).
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192
SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


def pil() -> Any:
    """The PIL.Image module, or an error saying how to install it."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise InvalidRequestError("images need Pillow: pip install 'forgellm[vision]'", "image") from exc
    return Image


def load_image(source: Any, param: str = "image", max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Any:
    """An RGB PIL image from a PIL image, an [H, W, 3] / [H, W] uint8 array, a path, bytes or a data URL."""
    image_module = pil()
    if isinstance(source, image_module.Image):
        return _checked(source, param, max_pixels)
    if isinstance(source, np.ndarray):
        return _checked(_from_array(source, param), param, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(bytes(source), param, max_pixels)
    if isinstance(source, Path) or (isinstance(source, str) and not source.startswith("data:")):
        path = Path(source).expanduser()
        if not path.is_file():
            raise InvalidRequestError(f"{param}: no image file at {str(path)!r}", param)
        return _decode(path.read_bytes(), param, max_pixels)
    if isinstance(source, str):
        return _decode(decode_data_url(source, param), param, max_pixels)
    raise InvalidRequestError(
        f"{param}: expected a PIL image, a numpy array, a file path, bytes or a data URL, got {type(source).__name__}",
        param,
    )


def decode_data_url(url: str, param: str = "image") -> bytes:
    """The bytes of a `data:image/...;base64,...` URL."""
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:") or not header.endswith(";base64"):
        raise InvalidRequestError(f"{param}: a data URL must look like data:image/png;base64,<data>", param)
    media_type = header[5:].removesuffix(";base64")
    if not media_type.startswith("image/"):
        raise InvalidRequestError(f"{param}: data URL of type {media_type!r} is not an image", param)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequestError(f"{param}: the data URL's base64 payload does not decode: {exc}", param) from exc


def _decode(data: bytes, param: str, max_pixels: int) -> Any:
    image_module = pil()
    try:
        image = image_module.open(io.BytesIO(data))
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError... for bad bytes
        raise InvalidRequestError(f"{param}: not a readable image ({type(exc).__name__}: {exc})", param) from exc
    if image.format not in SUPPORTED_FORMATS:
        raise InvalidRequestError(
            f"{param}: image format {image.format} is not supported; send one of {', '.join(SUPPORTED_FORMATS)}",
            param,
        )
    _check_size(image.width, image.height, param, max_pixels)  # from the header, before decoding the pixels
    try:
        image.load()
    except Exception as exc:  # truncated or corrupt pixel data
        raise InvalidRequestError(f"{param}: the image data is corrupt or truncated ({exc})", param) from exc
    return to_rgb(image)


def _from_array(array: np.ndarray, param: str) -> Any:
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise InvalidRequestError(
            f"{param}: a numpy image must be uint8 [H, W], [H, W, 3] or [H, W, 4], "
            f"got {array.dtype} {list(array.shape)}",
            param,
        )
    return pil().fromarray(array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array)


def _checked(image: Any, param: str, max_pixels: int) -> Any:
    _check_size(image.width, image.height, param, max_pixels)
    return to_rgb(image)


def to_rgb(image: Any) -> Any:
    """RGB, with transparency composited over white (as transformers' processors do, so the pixels match)."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        image_module = pil()
        rgba = image.convert("RGBA")
        background = image_module.new("RGBA", rgba.size, (255, 255, 255, 255))
        return image_module.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _check_size(width: int, height: int, param: str, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise InvalidRequestError(f"{param}: the image is empty ({width}x{height})", param)
    if width * height > max_pixels:
        raise InvalidRequestError(
            f"{param}: the image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}; "
            "send a smaller image",
            param,
        )
