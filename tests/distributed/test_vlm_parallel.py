"""Vision-language models split over ranks on the CPU (gloo): the tiny Qwen2-VL and Qwen2.5-VL under TP=2 and
PP=2 give one device's greedy tokens for images, a video, text alone and an image with a video, batched, with
chunks cutting through image tokens. The tower runs on rank 0 alone (each image encoded once); its rows reach the
first stage's other ranks with the step's batch."""

from __future__ import annotations

import pytest

from forgellm import LLM
from tests.fixtures.make_tiny_vlm import make
from tests.models.test_qwen2_vl_engine import generate, prompts


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def checkpoint(request, tmp_path_factory):  # noqa: ANN001, ANN201
    return make(tmp_path_factory.mktemp("vlm"), request.param)


@pytest.mark.parametrize("split", [{"tensor_parallel_size": 2}, {"pipeline_parallel_size": 2}], ids=["tp2", "pp2"])
def test_a_split_vision_language_model_gives_one_devices_tokens(checkpoint, split) -> None:
    options = dict(dtype="float32", block_size=4, max_num_batched_tokens=24)
    batch = prompts()
    expected = generate(LLM(str(checkpoint), **options), batch)
    llm = LLM(str(checkpoint), **options, **split)
    try:
        assert generate(llm, batch) == expected
        assert llm.engine.core.runner.encoder_cache.num_encoded == 7  # each image and video once, on rank 0
    finally:
        llm.engine.shutdown()
