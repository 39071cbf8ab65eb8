"""M-RoPE against transformers: the prompt's three position streams (Qwen2-VL and Qwen2.5-VL rules, images,
several images, videos with a time interval, text only) and the rotary cos/sin built from them."""

from __future__ import annotations

import types

import pytest
import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel, Qwen2VLRotaryEmbedding

from forgellm.hf.config import parse_rope_config
from forgellm.hf.config_types import RopeConfig
from forgellm.layers.rotary import RotaryEmbedding
from forgellm.multimodal.mrope import VisionSpan, mrope_positions

MERGE = 2


def reference_positions(model_class, num_tokens, spans, tokens_per_second=1, seconds=None):  # noqa: ANN001, ANN201
    """transformers' get_rope_index over one prompt whose placeholder runs are `spans` ((start, kind, grid))."""
    vision = types.SimpleNamespace(spatial_merge_size=MERGE, tokens_per_second=tokens_per_second)
    owner = types.SimpleNamespace(config=types.SimpleNamespace(vision_config=vision))
    owner.get_vision_position_ids = types.MethodType(model_class.get_vision_position_ids, owner)
    token_types = torch.zeros(1, num_tokens, dtype=torch.int32)
    images, videos = [], []
    for start, kind, grid in spans:
        length = grid[0] * (grid[1] // MERGE) * (grid[2] // MERGE)
        token_types[0, start : start + length] = 1 if kind == "image" else 2
        (images if kind == "image" else videos).append(grid)
    kwargs = {"second_per_grid_ts": seconds} if model_class is Qwen2_5_VLModel else {}
    positions, delta = model_class.get_rope_index(
        owner,
        torch.zeros(1, num_tokens, dtype=torch.int64),
        token_types,
        torch.tensor(images) if images else None,
        torch.tensor(videos) if videos else None,
        **kwargs,
    )
    return positions[:, 0], int(delta)


@pytest.mark.parametrize(
    "spans",
    [
        [(5, "image", (1, 8, 12))],  # 24 tokens after 5 of text
        [(0, "image", (1, 4, 4))],  # the prompt opens with the image
        [(3, "image", (1, 6, 10)), (20, "image", (1, 12, 4))],  # two images of different sizes
        [(2, "video", (4, 4, 6)), (30, "image", (1, 2, 2))],  # a video (4 temporal patches) then an image
    ],
)
@pytest.mark.parametrize("model_class", [Qwen2VLModel, Qwen2_5_VLModel])
def test_prompt_positions_equal_transformers(spans, model_class) -> None:
    num_tokens = max(s + g[0] * (g[1] // MERGE) * (g[2] // MERGE) for s, _, g in spans) + 7
    # Qwen2.5-VL spaces video patches by tokens_per_second x seconds per temporal patch (2 x 1.5 here).
    qwen25 = model_class is Qwen2_5_VLModel
    videos = [s for s in spans if s[1] == "video"]
    seconds = [1.5] * len(videos) if qwen25 and videos else None
    expected, expected_delta = reference_positions(model_class, num_tokens, spans, 2, seconds)
    ours_spans = [
        VisionSpan(start, grid, 2 * 1.5 if qwen25 and kind == "video" else 1.0) for start, kind, grid in spans
    ]
    positions, delta = mrope_positions(num_tokens, ours_spans, MERGE)
    assert torch.equal(positions, expected)
    assert delta == expected_delta != 0


def test_text_only_prompt_has_equal_streams_and_no_delta() -> None:
    positions, delta = mrope_positions(9, [], MERGE)
    assert torch.equal(positions, torch.arange(9).expand(3, -1)) and delta == 0


def test_spans_that_overlap_or_overrun_the_prompt_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        mrope_positions(40, [VisionSpan(0, (1, 4, 4)), VisionSpan(2, (1, 4, 4))], MERGE)
    with pytest.raises(ValueError, match="past the prompt"):
        mrope_positions(5, [VisionSpan(2, (1, 4, 4))], MERGE)


def test_rotary_cos_sin_equal_transformers_bit_for_bit() -> None:
    section = [2, 3, 3]  # head_dim 16: 8 frequency pairs
    config = Qwen2VLTextConfig(
        hidden_size=64,
        num_attention_heads=4,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
    )
    spans = [VisionSpan(3, (1, 6, 10)), VisionSpan(20, (2, 4, 4), 2.0)]
    positions, _ = mrope_positions(40, spans, MERGE)
    cos, sin = Qwen2VLRotaryEmbedding(config)(torch.zeros(1, dtype=torch.float32), positions[:, None, :])
    ours = RotaryEmbedding(16, RopeConfig(theta=10000.0, mrope_section=tuple(section)), 4096)
    our_cos, our_sin = ours.cos_sin(positions)
    assert torch.equal(our_cos, cos[0]) and torch.equal(our_sin, sin[0])
    # Text-only positions [T] are the three streams at once.
    text = torch.arange(11)
    assert all(torch.equal(a, b) for a, b in zip(ours.cos_sin(text), ours.cos_sin(text.expand(3, -1))))


def test_mrope_section_from_either_config_spelling() -> None:
    old = parse_rope_config({"rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "rope_theta": 1e6}, 4096)
    new_params = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}
    new = parse_rope_config({"rope_parameters": new_params}, 4096)
    assert old.mrope_section == new.mrope_section == (16, 24, 24) and old.type == new.type == "default"
    with pytest.raises(ValueError, match="must add up to head_dim / 2"):
        RotaryEmbedding(64, RopeConfig(mrope_section=(8, 8, 8)), 4096)
