"""Parity of the Qwen2-VL and Qwen2.5-VL vision towers with transformers' on tiny random configs.

Each test builds transformers' tower from its vision config class, re-initialises every parameter
at random (some of transformers' inits are zeros or ones, which would hide a swapped or skipped
tensor), loads its state_dict into ours through VisionConfig.from_hf(config.to_dict()) and compares
the merged outputs in float32.
"""

from __future__ import annotations

import pytest
import torch

from forgellm.errors import ModelLoadError
from forgellm.models.qwen2_5_vl_vision import Qwen2_5VisionTransformer, window_index
from forgellm.models.qwen2_vl_vision import Qwen2VisionTransformer, VisionConfig, vision_weights

pytest.importorskip("transformers")
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig  # noqa: E402
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (  # noqa: E402
    Qwen2_5_VisionTransformerPretrainedModel,
)
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig  # noqa: E402
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel  # noqa: E402

ATOL = 1e-4


def _randomize(model: torch.nn.Module) -> None:
    # Scaled by fan-in rather than a flat 0.02 so activations stay O(1) through the tiny tower and
    # 1e-4 is a tight bar; norm weights near (not at) 1 so a missing norm weight shows.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("weight") and ("norm" in name or "ln_q" in name):
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            elif param.dim() == 1:
                param.normal_(0.0, 0.1)
            else:
                param.normal_(0.0, param[0].numel() ** -0.5)


def _qwen2_pair() -> tuple[torch.nn.Module, Qwen2VisionTransformer]:
    torch.manual_seed(0)
    cfg = Qwen2VLVisionConfig(
        depth=2, embed_dim=32, num_heads=2, mlp_ratio=4, hidden_size=48, hidden_act="quick_gelu", patch_size=14
    )
    hf = Qwen2VisionTransformerPretrainedModel(cfg).eval()
    _randomize(hf)
    ours = Qwen2VisionTransformer(VisionConfig.from_hf(cfg.to_dict()))
    ours.load_weights(hf.state_dict().items())
    return hf, ours


def _qwen2_5_pair(window_size: int = 56) -> tuple[torch.nn.Module, Qwen2_5VisionTransformer]:
    torch.manual_seed(0)
    cfg = Qwen2_5_VLVisionConfig(
        depth=4,
        hidden_size=32,
        num_heads=2,
        intermediate_size=48,
        out_hidden_size=40,
        window_size=window_size,
        fullatt_block_indexes=[1, 3],
        patch_size=14,
    )
    hf = Qwen2_5_VisionTransformerPretrainedModel(cfg).eval()
    _randomize(hf)
    ours = Qwen2_5VisionTransformer(VisionConfig.from_hf(cfg.to_dict()))
    ours.load_weights(hf.state_dict().items())
    return hf, ours


@pytest.fixture(scope="module")
def qwen2():
    return _qwen2_pair()


@pytest.fixture(scope="module")
def qwen2_5():
    return _qwen2_5_pair()


def _pixels(grids: list[list[int]], per_patch: int = 3 * 2 * 14 * 14) -> tuple[torch.Tensor, torch.Tensor]:
    grid_thw = torch.tensor(grids, dtype=torch.int64)
    gen = torch.Generator().manual_seed(1)
    return torch.randn(int(grid_thw.prod(-1).sum()), per_patch, generator=gen), grid_thw


def _assert_parity(hf: torch.nn.Module, ours: torch.nn.Module, grids: list[list[int]]) -> torch.Tensor:
    pixels, grid_thw = _pixels(grids)
    with torch.no_grad():
        expected = hf(pixels, grid_thw=grid_thw).pooler_output
        got = ours(pixels, grid_thw)
    assert got.shape == expected.shape == (pixels.shape[0] // 4, ours.config.out_hidden_size)
    assert expected.std() > 0.1  # O(1) outputs: the tolerance is a real bar
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    return got


GRIDS = {
    "one_image": [[1, 8, 12]],
    "two_images": [[1, 8, 12], [1, 6, 4]],
    "video_t2": [[2, 6, 8]],
    "image_and_video": [[1, 4, 4], [2, 8, 6]],
}


@pytest.mark.parametrize("grids", GRIDS.values(), ids=GRIDS.keys())
def test_qwen2_vl_parity(qwen2, grids):
    _assert_parity(*qwen2, grids)


@pytest.mark.parametrize("grids", [*GRIDS.values(), [[1, 10, 6]]], ids=[*GRIDS.keys(), "partial_windows"])
def test_qwen2_5_vl_parity(qwen2_5, grids):
    _assert_parity(*qwen2_5, grids)


def test_qwen2_5_vl_parity_other_window_size():
    # window_size 112 -> 4x4 merge blocks: a 10x14 grid (5x7 blocks) has windows of 16, 12, 4 and 3 blocks.
    _assert_parity(*_qwen2_5_pair(window_size=112), [[1, 10, 14], [2, 6, 4]])


def test_windows_split_and_stay_within_frames(qwen2_5):
    _, ours = qwen2_5
    grid_thw = torch.tensor([[1, 10, 6], [2, 4, 4]])
    order, cu = window_index(grid_thw, ours.config)
    # 5x3 blocks in 2x2-block windows, row by row: 4, 2 | 4, 2 | 2, 1 blocks; then one window a frame.
    assert (cu.diff() // 4).tolist() == [4, 2, 4, 2, 2, 1, 4, 4]
    assert sorted(order.tolist()) == list(range(15 + 8))
    assert order[:4].tolist() == [0, 1, 3, 4]


def test_images_do_not_attend_to_each_other(qwen2, qwen2_5):
    for _, ours in (qwen2, qwen2_5):
        pixels, grid_thw = _pixels([[1, 8, 12], [1, 6, 4]])
        with torch.no_grad():
            together = ours(pixels, grid_thw)
            first = ours(pixels[:96], grid_thw[:1])
            second = ours(pixels[96:], grid_thw[1:])
        torch.testing.assert_close(together, torch.cat([first, second]), atol=ATOL, rtol=0)


def test_load_rejects_missing_and_unexpected_names(qwen2):
    hf, ours = qwen2
    state = dict(hf.state_dict())
    del state["blocks.1.attn.qkv.bias"]
    with pytest.raises(ModelLoadError, match=r"blocks\.1\.attn\.qkv\.bias"):
        ours.load_weights(state.items())
    state = dict(hf.state_dict())
    state["blocks.0.attn.q_norm.weight"] = torch.ones(16)
    with pytest.raises(ModelLoadError, match=r"blocks\.0\.attn\.q_norm\.weight"):
        ours.load_weights(state.items())
    state = dict(hf.state_dict())
    state["merger.mlp.2.weight"] = torch.zeros(7, 128)
    with pytest.raises(ModelLoadError, match=r"merger\.mlp\.2\.weight"):
        ours.load_weights(state.items())


def test_gated_mlp_halves_load_into_one_projection_and_each_is_required(qwen2_5):
    """Checkpoints store gate_proj and up_proj; the tower runs them as one gate_up_proj."""
    hf, ours = qwen2_5
    block = ours.blocks[2].mlp
    hidden = block.hidden
    state = dict(hf.state_dict())
    padded = block.padded
    assert padded % 64 == 0 and padded > hidden  # the fixture's 48 pads to 64
    torch.testing.assert_close(
        block.gate_up_proj.weight[padded : padded + hidden], state["blocks.2.mlp.up_proj.weight"]
    )
    torch.testing.assert_close(block.gate_up_proj.bias[:hidden], state["blocks.2.mlp.gate_proj.bias"])
    torch.testing.assert_close(block.down_proj.weight[:, :hidden], state["blocks.2.mlp.down_proj.weight"])
    assert not block.gate_up_proj.weight[hidden:padded].any() and not block.down_proj.weight[:, hidden:].any()
    del state["blocks.2.mlp.up_proj.bias"]
    fresh = Qwen2_5VisionTransformer(ours.config)
    with pytest.raises(ModelLoadError, match=r"blocks\.2\.mlp\.up_proj\.bias"):
        fresh.load_weights(state.items())
    state = dict(hf.state_dict())
    state["blocks.0.mlp.gate_proj.weight"] = torch.zeros(hidden + 1, ours.config.embed_dim)
    with pytest.raises(ModelLoadError, match=r"blocks\.0\.mlp\.gate_proj\.weight has shape"):
        fresh.load_weights(state.items())


def test_vision_weights_strips_both_prefixes():
    t = torch.zeros(1)
    names = [n for n, _ in vision_weights([("visual.blocks.0.norm1.weight", t), ("model.visual.merger.ln_q.bias", t)])]
    assert names == ["blocks.0.norm1.weight", "merger.ln_q.bias"]
    assert list(vision_weights([("model.language_model.norm.weight", t), ("lm_head.weight", t)])) == []


def test_config_from_published_vision_configs():
    # The vision_config blocks of Qwen/Qwen2-VL-7B-Instruct and Qwen/Qwen2.5-VL-7B-Instruct's config.json.
    qwen2 = VisionConfig.from_hf(
        {
            "depth": 32,
            "embed_dim": 1280,
            "mlp_ratio": 4,
            "num_heads": 16,
            "in_chans": 3,
            "hidden_size": 3584,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "temporal_patch_size": 2,
        }
    )
    assert (qwen2.variant, qwen2.embed_dim, qwen2.intermediate_size, qwen2.out_hidden_size) == (
        "qwen2_vl",
        1280,
        5120,
        3584,
    )
    assert (qwen2.hidden_act, qwen2.head_dim, qwen2.fullatt_block_indexes) == ("quick_gelu", 80, ())
    qwen2_5 = VisionConfig.from_hf(
        {
            "depth": 32,
            "hidden_act": "silu",
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "in_chans": 3,
            "out_hidden_size": 3584,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
            "tokens_per_second": 2,
            "temporal_patch_size": 2,
        }
    )
    assert (qwen2_5.variant, qwen2_5.embed_dim, qwen2_5.intermediate_size, qwen2_5.out_hidden_size) == (
        "qwen2_5_vl",
        1280,
        3420,
        3584,
    )
    assert (qwen2_5.window_size, qwen2_5.fullatt_block_indexes, qwen2_5.tokens_per_second) == (112, (7, 15, 23, 31), 2)
