"""`forgellm bench latency|throughput --image-size WxH` on the tiny Qwen2-VL: every request carries its own random
image (each encoded once, no cache hits), the report says so; a text-only model or a bad size is refused."""

from __future__ import annotations

import json

import pytest

from forgellm.bench.images import parse_image_size
from forgellm.cli.main import main
from tests.fixtures.make_tiny_vlm import make

ENGINE = ["--dtype", "float32", "--block-size", "4", "--disable-tqdm"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):  # noqa: ANN001, ANN201
    return make(tmp_path_factory.mktemp("vlm"), "qwen2_5_vl")


def test_latency_and_throughput_with_an_image_per_request(checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "latency.json"
    argv = ["bench", "latency", "--model", str(checkpoint), "--image-size", "84x56", "--batch-size", "2"]
    argv += [
        "--input-len",
        "8",
        "--output-len",
        "3",
        "--num-iters",
        "1",
        "--num-iters-warmup",
        "1",
        "--output",
        str(out),
    ]
    assert main(argv + ENGINE) == 0
    assert "one 84x56 image each" in capsys.readouterr().out
    assert json.loads(out.read_text())["image_size"] == "84x56"
    out = tmp_path / "throughput.json"
    argv = ["bench", "throughput", "--model", str(checkpoint), "--image-size", "56x56", "--num-prompts", "5"]
    argv += ["--input-len", "8", "--output-len", "3", "--num-warmup-requests", "1", "--output", str(out)]
    assert main(argv + ENGINE) == 0
    result = json.loads(out.read_text())
    # 8 text tokens + vision start/end + a 56x56 image's 4 tokens, each request.
    assert result["prompt_tokens"] == 5 * (8 + 2 + 4)


def test_image_size_needs_a_vision_language_model_and_a_valid_size(capsys) -> None:
    argv = ["bench", "latency", "--image-size", "56x56", "--num-iters", "1", "--output-len", "2", "--input-len", "4"]
    assert main(argv + ["--disable-tqdm"]) == 2
    assert "--image-size needs a vision-language model" in capsys.readouterr().err
    with pytest.raises(Exception, match="WIDTHxHEIGHT"):
        parse_image_size("896")
