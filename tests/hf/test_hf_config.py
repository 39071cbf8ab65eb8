"""config.json in transformers-4 and transformers-5 spellings gives one ModelArchConfig."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from forgellm.errors import ConfigError, ModelLoadError
from forgellm.hf import ModelArchConfig, RopeConfig, load_model_config, resolve_dtype

LLAMA_BASE = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 128,
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 1,
    "eos_token_id": [2, 3],
    "tie_word_embeddings": False,
}

LLAMA3_SCALING = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def write_config(directory: Path, config: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def v4_spelling(rope_theta: float, scaling: dict | None, type_key: str = "type", **extra) -> dict:
    rope_scaling = None if scaling is None else {type_key: scaling["rope_type"], **_without_type(scaling)}
    return {**LLAMA_BASE, "rope_theta": rope_theta, "rope_scaling": rope_scaling, "torch_dtype": "bfloat16", **extra}


def v5_spelling(rope_theta: float, scaling: dict | None, **extra) -> dict:
    params = {"rope_theta": rope_theta, "rope_type": "default", **(scaling or {})}
    return {**LLAMA_BASE, "rope_parameters": params, "dtype": "bfloat16", **extra}


def _without_type(scaling: dict) -> dict:
    return {k: v for k, v in scaling.items() if k != "rope_type"}


def test_llama3_v4_and_v5_spellings_are_equal(tmp_path):
    scaling = {"rope_type": "llama3", **LLAMA3_SCALING}
    old = load_model_config(write_config(tmp_path / "v4", v4_spelling(500000.0, scaling)))
    new = load_model_config(write_config(tmp_path / "v5", v5_spelling(500000.0, scaling)))
    assert old == new
    assert new == ModelArchConfig(
        architecture="LlamaForCausalLM",
        model_type="llama",
        vocab_size=128,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rms_norm_eps=1e-5,
        max_position_embeddings=131072,
        tie_word_embeddings=False,
        rope=RopeConfig(
            theta=500000.0,
            type="llama3",
            factor=8.0,
            original_max_position_embeddings=8192,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
        ),  # fmt: skip
        torch_dtype=torch.bfloat16,
        bos_token_id=1,
        eos_token_ids=(2, 3),
    )
    assert new.raw["rope_parameters"]["rope_theta"] == 500000.0


def test_transformers_resave_gives_the_same_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    old_dir = write_config(tmp_path / "v4", v4_spelling(500000.0, {"rope_type": "llama3", **LLAMA3_SCALING}))
    transformers.AutoConfig.from_pretrained(str(old_dir)).save_pretrained(str(tmp_path / "v5"))
    saved = json.loads((tmp_path / "v5" / "config.json").read_text())
    assert "rope_parameters" in saved and "dtype" in saved  # really the v5 spelling
    assert load_model_config(tmp_path / "v5") == load_model_config(old_dir)


ROPE_CASES = {
    "default": (None, RopeConfig(theta=10000.0)),
    "linear": ({"rope_type": "linear", "factor": 2.0}, RopeConfig(theta=10000.0, type="linear", factor=2.0)),
    "dynamic": ({"rope_type": "dynamic", "factor": 4.0}, RopeConfig(theta=10000.0, type="dynamic", factor=4.0)),
    "llama3": (
        {"rope_type": "llama3", **LLAMA3_SCALING, "low_freq_factor": 2.0},
        RopeConfig(type="llama3", factor=8.0, original_max_position_embeddings=8192, low_freq_factor=2.0),
    ),
    "yarn": (
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768, "beta_fast": 16,
         "attention_factor": 0.9, "mscale": 1.0, "mscale_all_dim": 0.5, "truncate": False},
        RopeConfig(type="yarn", factor=4.0, original_max_position_embeddings=32768, beta_fast=16.0,
                   attention_factor=0.9, mscale=1.0, mscale_all_dim=0.5, truncate=False),
    ),
}  # fmt: skip


@pytest.mark.parametrize("rope_type", sorted(ROPE_CASES))
@pytest.mark.parametrize("spelling", ["v4-type", "v4-rope_type", "v5"])
def test_every_rope_type(tmp_path, rope_type, spelling):
    scaling, expected = ROPE_CASES[rope_type]
    if spelling == "v5":
        config = v5_spelling(10000.0, scaling)
    else:
        config = v4_spelling(10000.0, scaling, type_key=spelling.removeprefix("v4-"))
    assert load_model_config(write_config(tmp_path, config)).rope == expected


def test_rope_defaults_and_derived_values(tmp_path):
    # No rope keys at all: theta 10000; yarn without factor derives it from the context extension.
    bare = {k: v for k, v in LLAMA_BASE.items()}
    assert load_model_config(write_config(tmp_path / "bare", bare)).rope == RopeConfig()
    yarn = v5_spelling(1e6, {"rope_type": "yarn", "original_max_position_embeddings": 32768})
    rope = load_model_config(write_config(tmp_path / "yarn", yarn)).rope
    assert rope.factor == 4.0 and rope.theta == 1e6 and rope.beta_fast == 32.0
    llama3 = v5_spelling(1e4, {"rope_type": "llama3", "factor": 8.0})
    assert load_model_config(write_config(tmp_path / "l3", llama3)).rope.original_max_position_embeddings == 131072
    partial = {**v4_spelling(1e4, None), "partial_rotary_factor": 0.5}
    assert load_model_config(write_config(tmp_path / "partial", partial)).rope.partial_rotary_factor == 0.5


def test_unsupported_rope_type_is_named(tmp_path):
    config = v5_spelling(1e4, {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [2.0]})
    with pytest.raises(ModelLoadError) as error:
        load_model_config(write_config(tmp_path, config))
    message = str(error.value)
    assert "'longrope'" in message and "llama3" in message and "yarn" in message
    with pytest.raises(ModelLoadError, match="needs a 'factor'"):
        load_model_config(write_config(tmp_path, v4_spelling(1e4, {"rope_type": "linear"})))


def test_qwen2_specifics(tmp_path):
    base = {**LLAMA_BASE, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "sliding_window": 4096}
    config = load_model_config(write_config(tmp_path / "a", {**base, "use_sliding_window": False}))
    assert (config.qkv_bias, config.o_proj_bias, config.qk_norm, config.sliding_window) == (True, False, False, None)
    config = load_model_config(write_config(tmp_path / "b", {**base, "use_sliding_window": True}))
    assert config.sliding_window == 4096 and config.architecture == "Qwen2ForCausalLM"


def test_qwen3_specifics(tmp_path):
    base = {**LLAMA_BASE, "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "head_dim": 32}
    config = load_model_config(write_config(tmp_path / "a", {**base, "sliding_window": 512}))
    assert config.qk_norm and not config.qkv_bias and not config.o_proj_bias
    assert config.head_dim == 32 and config.sliding_window is None
    config = load_model_config(write_config(tmp_path / "b", {**base, "attention_bias": True, "use_sliding_window": True,
                                                             "sliding_window": 512}))  # fmt: skip
    assert config.qkv_bias and config.o_proj_bias and config.sliding_window == 512


def test_llama_and_mistral_specifics(tmp_path):
    llama = load_model_config(write_config(tmp_path / "l", {**LLAMA_BASE, "attention_bias": True, "mlp_bias": True}))
    assert llama.qkv_bias and llama.o_proj_bias and llama.mlp_bias and not llama.qk_norm
    mistral = {**LLAMA_BASE, "architectures": ["MistralForCausalLM"], "model_type": "mistral"}
    assert load_model_config(write_config(tmp_path / "m1", {**mistral, "sliding_window": 4096})).sliding_window == 4096
    assert load_model_config(write_config(tmp_path / "m2", {**mistral, "sliding_window": None})).sliding_window is None
    plain = load_model_config(write_config(tmp_path / "m3", mistral))
    assert not plain.qkv_bias and not plain.o_proj_bias and not plain.mlp_bias


def test_transformers_saved_family_configs(tmp_path):
    transformers = pytest.importorskip("transformers")
    sizes = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2}  # fmt: skip
    loaded = {}
    for model_type in ("qwen2", "qwen3", "mistral"):
        arch = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "mistral": "MistralForCausalLM"}[model_type]
        config = transformers.AutoConfig.for_model(model_type, architectures=[arch], **sizes)
        config.save_pretrained(str(tmp_path / model_type))
        loaded[model_type] = load_model_config(tmp_path / model_type)
    qwen2, qwen3, mistral = loaded["qwen2"], loaded["qwen3"], loaded["mistral"]
    assert qwen2.qkv_bias and qwen2.sliding_window is None and qwen2.head_dim == 16
    assert qwen3.qk_norm and qwen3.head_dim == 128  # Qwen3Config's own default, written to the file
    assert mistral.sliding_window == 4096 and mistral.num_key_value_heads == 2 and mistral.eos_token_ids == (2,)


def test_derived_fields_and_eos_forms(tmp_path):
    minimal = {k: v for k, v in LLAMA_BASE.items() if k not in ("num_key_value_heads", "eos_token_id", "bos_token_id")}
    config = load_model_config(write_config(tmp_path / "a", {**minimal, "head_dim": None, "eos_token_id": 7}))
    assert config.num_key_value_heads == 4 and config.head_dim == 16
    assert config.eos_token_ids == (7,) and config.bos_token_id is None and config.torch_dtype is None
    assert config.hidden_act == "silu" and config.rms_norm_eps == 1e-5


@pytest.mark.parametrize(
    ("field", "spelling", "expected"),
    [("torch_dtype", "float16", torch.float16), ("dtype", "float32", torch.float32),
     ("torch_dtype", "torch.bfloat16", torch.bfloat16)],
)  # fmt: skip
def test_checkpoint_dtype(tmp_path, field, spelling, expected):
    assert load_model_config(write_config(tmp_path, {**LLAMA_BASE, field: spelling})).torch_dtype == expected


def test_resolve_dtype(tmp_path):
    bf16 = load_model_config(write_config(tmp_path / "a", {**LLAMA_BASE, "dtype": "bfloat16"}))
    unstated = load_model_config(write_config(tmp_path / "b", LLAMA_BASE))
    assert resolve_dtype("auto", bf16) == torch.bfloat16
    assert resolve_dtype("auto", unstated) == torch.float32
    for names, dtype in [(("float32", "fp32", "float"), torch.float32), (("float16", "fp16", "half"), torch.float16),
                         (("bfloat16", "bf16"), torch.bfloat16)]:  # fmt: skip
        assert all(resolve_dtype(name, bf16) == dtype for name in names)
    with pytest.raises(ConfigError, match="int8"):
        resolve_dtype("int8", bf16)


def test_missing_or_bad_files_name_the_file(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json not found"):
        load_model_config(tmp_path)
    (tmp_path / "config.json").write_text("{bad json")
    with pytest.raises(ModelLoadError, match=r"config.json is not valid JSON"):
        load_model_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match="expected a JSON object"):
        load_model_config(tmp_path)


@pytest.mark.parametrize("field", ["architectures", "model_type", "hidden_size", "num_hidden_layers", "vocab_size"])
def test_missing_required_field_is_named(tmp_path, field):
    config = {k: v for k, v in LLAMA_BASE.items() if k != field}
    with pytest.raises(ModelLoadError, match=field) as error:
        load_model_config(write_config(tmp_path, config))
    assert "config.json" in str(error.value)


def test_wrong_types_are_named(tmp_path):
    with pytest.raises(ModelLoadError, match="hidden_size"):
        load_model_config(write_config(tmp_path / "a", {**LLAMA_BASE, "hidden_size": "64"}))
    with pytest.raises(ModelLoadError, match="eos_token_id"):
        load_model_config(write_config(tmp_path / "b", {**LLAMA_BASE, "eos_token_id": "2"}))
    with pytest.raises(ModelLoadError, match="dtype"):
        load_model_config(write_config(tmp_path / "c", {**LLAMA_BASE, "dtype": "float128"}))
    with pytest.raises(ModelLoadError, match="num_attention_heads' must be positive"):
        load_model_config(write_config(tmp_path / "d", {**LLAMA_BASE, "num_attention_heads": 0}))
    with pytest.raises(ModelLoadError, match="not a multiple of num_key_value_heads 3"):
        load_model_config(write_config(tmp_path / "e", {**LLAMA_BASE, "num_key_value_heads": 3}))
    with pytest.raises(ModelLoadError, match="rope factor"):
        load_model_config(write_config(tmp_path / "f", v5_spelling(1e4, {"rope_type": "linear", "factor": "2"})))
    with pytest.raises(ModelLoadError, match="rms_norm_eps"):
        load_model_config(write_config(tmp_path / "g", {**LLAMA_BASE, "rms_norm_eps": [1e-5]}))


def test_architecture_is_not_checked(tmp_path):
    config = {**LLAMA_BASE, "architectures": ["BrandNewForCausalLM"], "model_type": "brand_new"}
    assert load_model_config(write_config(tmp_path, config)).architecture == "BrandNewForCausalLM"
