"""Qwen2-VL / Qwen2.5-VL on a GPU: image prompts through the engine with its Triton kernels and CUDA graphs give
transformers' greedy tokens (float32, the tiny random checkpoints), decode steps replay the captured graphs
(their positions are plain [T] index + delta), and image steps run eagerly with [3, T] positions."""

from __future__ import annotations

import pytest

from forgellm import LLM
from tests.gpu.helpers import count_calls
from tests.models.test_qwen2_vl_engine import GREEDY, image_prompt, picture, prompts, reference_greedy

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


@pytest.mark.parametrize("variant", ["qwen2_vl", "qwen2_5_vl"])
def test_bf16_tower_at_real_width_is_as_close_to_float32_as_transformers_own_bf16(variant):
    """The tower's CUDA path (Triton RMSNorm, rotary in float32 and SiLU-and-mul, FlashAttention over
    variable-length windows) at the published width, on an image with whole windows, one with partial ones
    and a two-frame video: its bf16 error against transformers' float32 tower is no worse than
    transformers' own bf16 tower's (both with random weights and the same inputs)."""
    import torch
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

    from forgellm.models.qwen2_5_vl_vision import Qwen2_5VisionTransformer
    from forgellm.models.qwen2_vl_vision import Qwen2VisionTransformer, VisionConfig

    torch.manual_seed(0)
    if variant == "qwen2_vl":
        cfg = Qwen2VLVisionConfig(depth=4, embed_dim=1280, num_heads=16, hidden_size=3584)
        hf_cls, ours_cls = Qwen2VisionTransformerPretrainedModel, Qwen2VisionTransformer
    else:
        cfg = Qwen2_5_VLVisionConfig(
            depth=4, hidden_size=1280, num_heads=16, intermediate_size=3420, out_hidden_size=3584,
            fullatt_block_indexes=[1, 3], window_size=112,
        )  # fmt: skip
        hf_cls, ours_cls = Qwen2_5_VisionTransformerPretrainedModel, Qwen2_5VisionTransformer
    cfg._attn_implementation = "sdpa"
    hf = hf_cls._from_config(cfg).eval().cuda()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if param.dim() == 1:
                param.copy_(
                    1.0 + 0.1 * torch.randn_like(param)
                    if "norm" in name or "ln_q" in name
                    else 0.02 * torch.randn_like(param)
                )
            else:
                param.normal_(0.0, param[0].numel() ** -0.5)
    ours = ours_cls(VisionConfig.from_hf(cfg.to_dict(), variant)).cuda()
    ours.load_weights(hf.state_dict().items())
    grid = torch.tensor([[1, 64, 64], [1, 38, 50], [2, 16, 20]], device="cuda")
    pixels = torch.randn(
        int(grid.prod(-1).sum()), 3 * 2 * 14 * 14, device="cuda", generator=torch.Generator("cuda").manual_seed(1)
    )
    with torch.inference_mode():
        truth = hf(pixels, grid_thw=grid).pooler_output.float()
        hf_bf16 = hf.to(torch.bfloat16)(pixels.bfloat16(), grid_thw=grid).pooler_output.float()
        got = ours.to(torch.bfloat16)(pixels.bfloat16(), grid).float()
    error = lambda x: ((x - truth).norm() / truth.norm()).item()  # noqa: E731
    assert got.shape == truth.shape
    assert error(got) <= 1.5 * error(hf_bf16) + 1e-3, (error(got), error(hf_bf16))


def test_same_size_images_replay_the_towers_graph_and_equal_transformers(checkpoint):
    """Four different images of one size, one request after another: the first two run the tower eagerly,
    the second sighting captures a graph for that grid, later ones replay it; every answer equals
    transformers' greedy tokens. A one-off size stays eager."""
    from tests.fixtures.make_tiny_vlm import build

    llm = LLM(str(checkpoint), device="cuda", dtype="float32", block_size=16)
    runner = llm.engine.core.runner.encode_images
    batch = [image_prompt([[5, 6], [7]], [picture(84, 112, 40 + i)]) for i in range(4)]
    batch.append(image_prompt([[8], [9]], [picture(56, 168, 50)]))
    ours = [llm.generate([p], GREEDY, use_tqdm=False)[0].outputs[0].token_ids for p in batch]
    hf = build(checkpoint.name)
    assert ours == [reference_greedy(hf, checkpoint, p) for p in batch]
    assert list(runner.graphs) == [(1, 6, 8)]  # 84 x 112 pixels = 6 x 8 patches; the 56 x 168 one was seen once
    assert runner.num_replays == 3


def test_tower_graph_replay_equals_its_eager_pass_at_real_width():
    """bf16 at Qwen2.5-VL's published width, a 896 x 896 image: the replayed graph gives the eager pass's
    output bit for bit (the same kernels on the same shapes), for fresh pixels each time."""
    import torch
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig

    from forgellm.models.qwen2_5_vl_vision import Qwen2_5VisionTransformer
    from forgellm.models.qwen2_vl_vision import VisionConfig
    from forgellm.worker.encoder_graphs import EncoderGraphRunner

    cfg = Qwen2_5_VLVisionConfig(depth=4, hidden_size=1280, num_heads=16, intermediate_size=3420,
                                 out_hidden_size=3584, fullatt_block_indexes=[1, 3])  # fmt: skip
    torch.manual_seed(0)
    tower = Qwen2_5VisionTransformer(VisionConfig.from_hf(cfg.to_dict(), "qwen2_5_vl")).cuda()
    with torch.no_grad():
        for param in tower.parameters():
            param.normal_(0.0, 0.03)
    tower.to(torch.bfloat16)
    runner = EncoderGraphRunner(tower, capture_after=1)
    grid = torch.tensor([[1, 64, 64]])
    for seed in range(3):
        pixels = torch.randn(4096, 1176, device="cuda", generator=torch.Generator("cuda").manual_seed(seed))
        with torch.inference_mode():
            expected = tower(pixels.bfloat16(), grid)
            got = runner(pixels, grid)
        assert torch.equal(got, expected)
    assert runner.num_replays == 3
