"""A VLM's config.json in both spellings: transformers 5's nested text_config and the flat one Qwen2-VL was
published with give the same language-model fields (Qwen2 biases, M-RoPE sections)."""

from __future__ import annotations

import pytest
from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

from forgellm.hf.config import parse_model_config
from tests.fixtures.make_tiny_vlm import TEXT as FIXTURE_TEXT

# The tiny fixture's language model, without its rope (each spelling states its own below).
TEXT = {key: value for key, value in FIXTURE_TEXT.items() if key != "rope_parameters"}


@pytest.mark.parametrize("config_class", [Qwen2VLConfig, Qwen2_5_VLConfig])
def test_nested_and_flat_spellings_agree(config_class) -> None:
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}
    nested = config_class(text_config={**TEXT, "rope_parameters": rope}).to_dict()
    nested["architectures"] = [config_class.__name__.replace("Config", "ForConditionalGeneration")]
    flat = {
        "architectures": nested["architectures"],
        "model_type": nested["model_type"],
        **TEXT,
        "rope_theta": 1e6,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "vision_config": nested["vision_config"],
    }
    a, b = parse_model_config(nested), parse_model_config(flat)
    for field in ("hidden_size", "num_hidden_layers", "num_key_value_heads", "head_dim", "vocab_size", "rope"):
        assert getattr(a, field) == getattr(b, field), field
    assert a.model_type == nested["model_type"] and a.qkv_bias and not a.o_proj_bias
    assert a.rope.mrope_section == (2, 3, 3) and a.rope.theta == 1e6 and a.hidden_size == 64
