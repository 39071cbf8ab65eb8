"""Images in chat messages: OpenAI content parts -> messages for the chat template, and the images in order.

Image parts are `{"type": "image_url", "image_url": {"url": ...}}` (OpenAI's, also with the URL as a plain
string) and `{"type": "image", "image": ...}` (Python only: a PIL image, array, bytes, path or data URL). For the
template each becomes `{"type": "image"}`, which a vision-language model's template renders as its image
placeholder (Qwen2-VL: <|vision_start|><|image_pad|><|vision_end|>); the engine then expands it to the
image's tokens. URLs resolve under a MediaPolicy: data URLs always, local files and http(s) only where
the operator allowed them.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from forgellm.errors import InvalidRequestError
from forgellm.multimodal.media import load_image

DEFAULT_MAX_FETCH_BYTES = 20 * 1024 * 1024
DEFAULT_FETCH_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class MediaPolicy:
    """Where image URLs may point: data URLs always; files under `allowed_local_media_path`; http(s) URLs
    of the hosts in `allowed_media_domains`, at most `max_fetch_bytes`, within `fetch_timeout_s`."""

    allowed_local_media_path: str | None = None
    allowed_media_domains: tuple[str, ...] = ()
    max_fetch_bytes: int = DEFAULT_MAX_FETCH_BYTES
    fetch_timeout_s: float = DEFAULT_FETCH_TIMEOUT_S

    @classmethod
    def from_options(cls, allowed_local_media_path: str | None, allowed_media_domains: str | None) -> MediaPolicy:
        """From the engine options (EngineConfig: a directory, comma-separated hosts)."""
        domains = tuple(d.strip() for d in (allowed_media_domains or "").split(",") if d.strip())
        return cls(allowed_local_media_path, domains)

    def resolve(self, url: str, param: str) -> Any:
        """What load_image takes for `url`: the data URL itself, a Path, or the fetched bytes."""
        if url.startswith("data:"):
            return url
        parsed = urlparse(url)
        if parsed.scheme in ("", "file"):
            return self._local_file(unquote(parsed.path) if parsed.scheme == "file" else url, param)
        if parsed.scheme in ("http", "https"):
            return self._fetch(url, parsed.hostname or "", param)
        raise InvalidRequestError(f"{param}: URL scheme {parsed.scheme!r} is not supported; send a data URL", param)

    def _local_file(self, path: str, param: str) -> Path:
        if self.allowed_local_media_path is None:
            raise InvalidRequestError(
                f"{param}: local files are not allowed (the server runs without --allowed-local-media-path); "
                "send the image as a data URL",
                param,
            )
        root = Path(self.allowed_local_media_path).resolve()
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(root):
            raise InvalidRequestError(f"{param}: {path!r} is outside the allowed media directory", param)
        return resolved

    def _fetch(self, url: str, host: str, param: str) -> bytes:
        if host not in self.allowed_media_domains:
            raise InvalidRequestError(
                f"{param}: host {host!r} is not in --allowed-media-domains; send the image as a data URL", param
            )
        try:
            with urllib.request.urlopen(url, timeout=self.fetch_timeout_s) as response:  # noqa: S310 - http(s) only
                data = response.read(self.max_fetch_bytes + 1)
        except (OSError, ValueError) as exc:
            raise InvalidRequestError(f"{param}: could not fetch {url!r}: {exc}", param) from exc
        if len(data) > self.max_fetch_bytes:
            raise InvalidRequestError(f"{param}: the image at {url!r} is over {self.max_fetch_bytes:,} bytes", param)
        return data


def split_images(
    messages: list[dict[str, Any]], policy: MediaPolicy, param: str = "messages"
) -> tuple[list[dict[str, Any]], list[Any]]:
    """(messages with each image part replaced by {"type": "image"}, the images in order of appearance)."""
    rendered, images = [], []
    for i, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            rendered.append(message)
            continue
        parts = []
        for j, part in enumerate(content):
            where = f"{param}[{i}].content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "image_url":
                value = part.get("image_url")
                url = value.get("url") if isinstance(value, dict) else value
                if not isinstance(url, str):
                    raise InvalidRequestError(f'{where}: an image_url part needs {{"url": "..."}}', where)
                # Decoded here, so a bad image is named by its place in the messages.
                images.append(load_image(policy.resolve(url, f"{where}.image_url"), f"{where}.image_url"))
                parts.append({"type": "image"})
            elif kind == "image":  # Python callers only (the server takes image_url): trusted as given
                images.append(part.get("image"))
                parts.append({"type": "image"})
            else:
                parts.append(part)
        rendered.append({**message, "content": parts})
    return rendered, images


def refuse_images_for_text_only_model() -> None:
    """Raise the error for image parts sent to a model without a vision tower (before its template fails)."""
    raise InvalidRequestError("this model takes text only: send the messages without image parts", "messages")
