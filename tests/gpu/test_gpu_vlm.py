"""Qwen2-VL / Qwen2.5-VL on a GPU: image prompts through the engine with its Triton kernels and CUDA graphs give
transformers' greedy tokens (float32, the tiny random checkpoints), decode steps replay the captured graphs
(their positions are plain [T] index + delta), and image steps run eagerly with [3, T] positions."""

from __future__ import annotations

import pytest

from forgellm import LLM
from tests.gpu.helpers import count_calls
from tests.models.test_qwen2_vl_engine import GREEDY, prompts, reference_greedy

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def checkpoint(request, tmp_path_factory):  # noqa: ANN001, ANN201
    from tests.fixtures.make_tiny_vlm import make

    return make(tmp_path_factory.mktemp("vlm"), request.param)


@pytest.mark.parametrize("async_scheduling", ["on", "off"])
def test_image_prompts_on_cuda_equal_transformers_and_decode_replays_graphs(checkpoint, monkeypatch, async_scheduling):
    from tests.fixtures.make_tiny_vlm import build

    llm = LLM(str(checkpoint), device="cuda", dtype="float32", block_size=16, async_scheduling=async_scheduling)
    graphs = llm.engine.core.runner.graph_runner
    assert graphs is not None
    replays = count_calls(monkeypatch, graphs, "replay", key=lambda key, host: key[0])
    batch = prompts()
    ours = [out.outputs[0].token_ids for out in llm.generate(batch, GREEDY, use_tqdm=False)]
    hf = build(checkpoint.name)  # on the CPU: the reference
    assert ours == [reference_greedy(hf, checkpoint, p) for p in batch]
    assert replays["decode"] > 0  # image requests decode under the captured graphs
    assert llm.engine.core.runner.encoder_cache.num_encoded == 7  # 5 images, 2 videos
