"""Images over HTTP: the official openai client sends image_url parts (data URLs) to a real server running the
tiny Qwen2-VL checkpoint; streamed and not, the answer is the Python API's (itself checked against
transformers) and usage counts the image's tokens. Bad image input gets a 400 naming the field, and the
next request is served."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import openai
import pytest
from PIL import Image

from forgellm import LLM, SamplingParams
from tests.fixtures.make_tiny_vlm import make

OPTIONS = dict(dtype="float32", block_size=4)


def image_bytes(seed: int, size: tuple[int, int] = (60, 90), fmt: str = "PNG") -> bytes:
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def data_url(seed: int, size: tuple[int, int] = (60, 90), data: bytes | None = None) -> str:
    return "data:image/png;base64," + base64.b64encode(image_bytes(seed, size) if data is None else data).decode()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (and no pixels): enough for a size check, cheap to send."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def user(*images: str, text: str = "What is in the picture?") -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in images]
    return [{"role": "user", "content": [{"type": "text", "text": text}, *parts]}]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):  # noqa: ANN001, ANN201
    return make(tmp_path_factory.mktemp("vlm"), "qwen2_vl")


@pytest.fixture(scope="module")
def vlm_server(server_factory, checkpoint):  # noqa: ANN001, ANN201
    return server_factory(model=str(checkpoint), limit_mm_per_prompt=2, **OPTIONS)


def test_an_image_over_http_answers_as_the_python_api(vlm_server, checkpoint) -> None:
    messages = user(data_url(0), data_url(1, (84, 56)))
    expected = LLM(str(checkpoint), **OPTIONS).chat(
        messages, SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True), use_tqdm=False
    )[0]
    client = vlm_server.client()
    extra = {"ignore_eos": True}
    reply = client.chat.completions.create(
        model=vlm_server.settings.model_name, messages=messages, max_tokens=8, temperature=0, extra_body=extra
    )
    assert reply.choices[0].message.content == expected.outputs[0].text
    assert reply.usage.prompt_tokens == len(expected.prompt_token_ids) > 20  # the images' tokens count
    chunks = client.chat.completions.create(
        model=vlm_server.settings.model_name, messages=messages, max_tokens=8, temperature=0, extra_body=extra,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    text, usage = "", None
    for chunk in chunks:
        text += "".join(c.delta.content or "" for c in chunk.choices)
        usage = chunk.usage or usage
    assert text == expected.outputs[0].text and usage.prompt_tokens == len(expected.prompt_token_ids)


@pytest.mark.parametrize(
    ("messages", "param", "words"),
    [
        (user("data:image/png;base64,AAAA"), "messages[0].content[1].image_url", "not a readable image"),
        (user("https://example.com/cat.png"), "messages[0].content[1].image_url", "allowed-media-domains"),
        (user("/etc/passwd"), "messages[0].content[1].image_url", "local files are not allowed"),
        (user(data_url(2), data_url(3), data_url(4)), "multi_modal_data.image", "over the limit of 2"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "messages.0.content.0", "url"),
        (user(data_url(0, data=image_bytes(6)[:300])), "messages[0].content[1].image_url", "corrupt or truncated"),
        (user(data_url(0, data=image_bytes(7, fmt="ICO"))), "messages[0].content[1].image_url", "format ICO"),
        (user(data_url(0, data=png_header(9000, 8000))), "messages[0].content[1].image_url", "9000x8000"),
    ],
)
def test_bad_images_are_400s_naming_the_field_and_the_server_goes_on(vlm_server, messages, param, words) -> None:
    client = vlm_server.client()
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=vlm_server.settings.model_name, messages=messages, max_tokens=4)
    error = err.value.body
    assert words in error["message"] and error["param"].startswith(param), error
    ok = client.chat.completions.create(model=vlm_server.settings.model_name, messages=user(data_url(5)), max_tokens=4)
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_image_placeholders_without_images_are_a_400(vlm_server) -> None:
    from tests.fixtures.make_tiny_vlm import IMAGE_TOKEN, VISION_END, VISION_START

    client = vlm_server.client()
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(
            model=vlm_server.settings.model_name, prompt=[5, VISION_START, IMAGE_TOKEN, VISION_END, 6], max_tokens=4
        )
    assert "1 image placeholder token(s)" in err.value.body["message"], err.value.body
    ok = client.completions.create(model=vlm_server.settings.model_name, prompt=[5, 6, 7], max_tokens=4)
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_an_image_to_a_text_only_model_is_a_400(demo_server) -> None:
    client = demo_server.client()
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=demo_server.settings.model_name, messages=user(data_url(0)), max_tokens=4)
    assert "takes text only" in err.value.body["message"] and err.value.body["param"] == "messages"
    ok = client.chat.completions.create(
        model=demo_server.settings.model_name, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert ok.choices[0].finish_reason in ("stop", "length")
