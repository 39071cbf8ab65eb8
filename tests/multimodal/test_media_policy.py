"""Where image URLs may point: http(s) fetches from an allowed host (a real server on 127.0.0.1), bounded in size,
and a host that does not answer is a typed error naming the field; the encoder cache keeps what live requests
hold and lets the rest go past its budget, least recently used first."""

from __future__ import annotations

import http.server
import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from forgellm.errors import InvalidRequestError
from forgellm.multimodal.chat_content import MediaPolicy, split_images
from forgellm.multimodal.encoder_cache import EncoderCache
from forgellm.multimodal.inputs import VisionItem


@pytest.fixture(scope="module")
def image_server():  # noqa: ANN201
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 12, 3), dtype=np.uint8)).save(buffer, format="PNG")
    png = buffer.getvalue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/cat.png", len(png)
    server.shutdown()


def parts(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]


def test_an_allowed_host_is_fetched_within_the_size_limit(image_server) -> None:
    url, size = image_server
    rendered, images = split_images(parts(url), MediaPolicy(allowed_media_domains=("127.0.0.1",)))
    assert rendered[0]["content"] == [{"type": "image"}] and images[0].size == (12, 8)
    too_small = MediaPolicy(allowed_media_domains=("127.0.0.1",), max_fetch_bytes=size - 1)
    with pytest.raises(InvalidRequestError, match=f"over {size - 1:,} bytes") as err:
        split_images(parts(url), too_small)
    assert err.value.param == "messages[0].content[0].image_url"


def test_a_host_that_does_not_answer_is_a_typed_error() -> None:
    policy = MediaPolicy(allowed_media_domains=("127.0.0.1",), fetch_timeout_s=2.0)
    with pytest.raises(InvalidRequestError, match="could not fetch"):
        split_images(parts("http://127.0.0.1:9/cat.png"), policy)  # port 9 (discard): nothing listens


def item(seed: int, tokens: int = 4) -> VisionItem:
    return VisionItem(torch.full((tokens * 4, 3), float(seed)), (1, 4, tokens), 0, tokens, seed)


def test_the_encoder_cache_keeps_held_entries_and_evicts_the_least_recently_used() -> None:
    calls = []

    def encode(pixels: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        calls.append(grids.shape[0])
        return pixels[::4, :2].clone()  # 4 rows of 2 floats (32 bytes) per item

    cache = EncoderCache(max_unreferenced_bytes=64)  # two unreferenced entries fit
    first = cache.embeddings([("a", item(1)), ("b", item(2))], encode, torch.device("cpu"))
    assert calls == [2] and torch.equal(first[1], torch.full((4, 2), 1.0))
    cache.embeddings([("c", item(2)), ("c", item(3))], encode, torch.device("cpu"))
    assert calls == [2, 1]  # item 2 was cached: only item 3 is encoded
    cache.release("a")
    cache.release("b")
    assert len(cache) == 3  # 1 unreferenced (32 bytes) fits the budget; 2 and 3 are held by "c"
    cache.release("c")
    assert len(cache) == 2  # 96 unreferenced bytes: the least recently used (item 1) goes
    cache.embeddings([("d", item(1))], encode, torch.device("cpu"))
    assert calls == [2, 1, 1]  # evicted, so encoded again
