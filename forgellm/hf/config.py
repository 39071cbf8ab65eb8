"""Read a Hugging Face config.json (transformers 4 or 5 spelling) into a ModelArchConfig."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from forgellm.errors import ConfigError, ModelLoadError
from forgellm.hf.config_types import ModelArchConfig, RopeConfig

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")

_DTYPE_ALIASES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}

# Positive integers every decoder-only config states; transformers' class defaults are not guessed.
_REQUIRED_SIZES = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
)


def load_model_config(model_dir: str | Path) -> ModelArchConfig:
    """Parse `model_dir/config.json` into a ModelArchConfig; ModelLoadError names the bad file or field."""
    path = Path(model_dir) / "config.json"
    raw = read_json_file(path)
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return parse_model_config(raw, source=str(path))


def parse_model_config(raw: dict[str, Any], source: str = "config.json") -> ModelArchConfig:
    """Build a ModelArchConfig from an already-parsed config.json dict."""
    fields = _ConfigFields(_with_text_config(raw), source)
    architectures = fields.get("architectures")
    if not isinstance(architectures, list) or not architectures or not isinstance(architectures[0], str):
        raise ModelLoadError(f"{source}: missing or empty 'architectures' (expected e.g. [\"LlamaForCausalLM\"])")
    model_type = fields.require("model_type")
    sizes = {name: _as_int(fields.require(name), name, source, positive=True) for name in _REQUIRED_SIZES}
    num_heads = sizes["num_attention_heads"]
    num_kv_heads = _as_int(fields.get("num_key_value_heads", num_heads), "num_key_value_heads", source, positive=True)
    if num_heads % num_kv_heads:
        raise ModelLoadError(
            f"{source}: num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"
        )
    head_dim = fields.get("head_dim")
    if head_dim is None:
        if sizes["hidden_size"] % num_heads:
            raise ModelLoadError(
                f"{source}: hidden_size {sizes['hidden_size']} is not divisible by num_attention_heads {num_heads} "
                "and no head_dim is given"
            )
        head_dim = sizes["hidden_size"] // num_heads
    return ModelArchConfig(
        architecture=architectures[0],
        model_type=str(model_type),
        **sizes,
        num_key_value_heads=num_kv_heads,
        head_dim=_as_int(head_dim, "head_dim", source, positive=True),
        rms_norm_eps=_as_float(fields.get("rms_norm_eps", 1e-6), "rms_norm_eps", source),
        tie_word_embeddings=bool(fields.get("tie_word_embeddings", False)),
        rope=parse_rope_config(fields.raw, sizes["max_position_embeddings"], source),
        hidden_act=str(fields.get("hidden_act", "silu")),
        torch_dtype=_parse_checkpoint_dtype(fields, source),
        bos_token_id=_opt_int(fields.get("bos_token_id"), "bos_token_id", source),
        eos_token_ids=_as_id_tuple(fields.get("eos_token_id"), "eos_token_id", source),
        raw=raw,
        **_family_fields(str(model_type), fields),
    )


def parse_rope_config(raw: dict[str, Any], max_position_embeddings: int, source: str = "config.json") -> RopeConfig:
    """Resolve rotary settings from `rope_parameters` (v5) or `rope_theta` + `rope_scaling` (v4)."""
    params = raw.get("rope_parameters")
    if params is None:
        params = raw.get("rope_scaling")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ModelLoadError(f"{source}: rope_parameters/rope_scaling must be an object, got {params!r}")
    if any(isinstance(value, dict) for value in params.values()):
        raise ModelLoadError(f"{source}: per-layer-type rope_parameters ({sorted(params)}) are not supported")
    rope_type = params.get("rope_type", params.get("type")) or "default"
    if rope_type == "mrope":  # the Qwen2-VL configs' older spelling of default frequencies with sections
        rope_type = "default"
    mrope_section = params.get("mrope_section")
    if mrope_section is not None and (
        not isinstance(mrope_section, list) or not all(isinstance(n, int) and n > 0 for n in mrope_section)
    ):
        raise ModelLoadError(f"{source}: mrope_section must be a list of positive integers, got {mrope_section!r}")
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ModelLoadError(
            f"{source}: rope type {rope_type!r} is not supported; supported types: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    # v5 keeps rope_theta inside rope_parameters; v4 has it top-level. Prefer the dict, as transformers does.
    theta = _first_set(params.get("rope_theta"), raw.get("rope_theta"), 10000.0)
    partial = _first_set(params.get("partial_rotary_factor"), raw.get("partial_rotary_factor"), 1.0)
    # A top-level original_max_position_embeddings (Phi-3 style) wins, as in transformers.
    original = _first_set(raw.get("original_max_position_embeddings"), params.get("original_max_position_embeddings"))
    if original is None and rope_type in ("llama3", "yarn"):
        original = max_position_embeddings
    original = _opt_int(original, "original_max_position_embeddings", source, positive=True)
    factor = params.get("factor") if rope_type != "default" else 1.0
    if factor is None:
        if rope_type in ("linear", "dynamic", "llama3"):
            raise ModelLoadError(f"{source}: rope type {rope_type!r} needs a 'factor'")
        # yarn without a factor derives it from the context extension, as transformers does.
        factor = max_position_embeddings / original

    def number(name: str, value: Any) -> float:
        return _as_float(value, f"rope {name}", source)

    def optional(name: str) -> float | None:
        value = params.get(name)
        return None if value is None else number(name, value)

    return RopeConfig(
        theta=number("rope_theta", theta),
        type=rope_type,
        factor=number("factor", factor),
        original_max_position_embeddings=original,
        low_freq_factor=number("low_freq_factor", _first_set(params.get("low_freq_factor"), 1.0)),
        high_freq_factor=number("high_freq_factor", _first_set(params.get("high_freq_factor"), 4.0)),
        # transformers treats 0 like unset for the yarn betas.
        beta_fast=number("beta_fast", params.get("beta_fast") or 32.0),
        beta_slow=number("beta_slow", params.get("beta_slow") or 1.0),
        attention_factor=optional("attention_factor"),
        mscale=optional("mscale"),
        mscale_all_dim=optional("mscale_all_dim"),
        truncate=bool(_first_set(params.get("truncate"), True)),
        partial_rotary_factor=number("partial_rotary_factor", partial),
        mrope_section=None if mrope_section is None else tuple(mrope_section),
    )


def resolve_dtype(name: str, config: ModelArchConfig) -> torch.dtype:
    """Turn an engine dtype option into a torch.dtype; "auto" means the checkpoint's (float32 if unstated)."""
    if name == "auto":
        return config.torch_dtype or torch.float32
    if name not in _DTYPE_ALIASES:
        raise ConfigError(f"dtype must be auto or one of {sorted(_DTYPE_ALIASES)}, got {name!r}")
    return _DTYPE_ALIASES[name]


def read_json_file(path: Path) -> Any:
    """Parse a JSON file, turning a missing file or bad JSON into a ModelLoadError naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelLoadError(f"{path} not found; is {path.parent} a Hugging Face model directory?") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc


class _ConfigFields:
    """Field access over the raw dict where an explicit JSON null counts as absent."""

    def __init__(self, raw: dict[str, Any], source: str) -> None:
        self.raw = raw
        self.source = source

    def get(self, name: str, default: Any = None) -> Any:
        value = self.raw.get(name)
        return default if value is None else value

    def require(self, name: str) -> Any:
        value = self.raw.get(name)
        if value is None:
            raise ModelLoadError(f"{self.source}: required field '{name}' is missing")
        return value


def _with_text_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A VLM's language-model fields at the top level: transformers 5 nests them in `text_config`, older
    checkpoints (Qwen2-VL as published) keep them flat; the nested ones win, as in transformers."""
    text = raw.get("text_config")
    if not isinstance(text, dict):
        return raw
    return {**raw, **{key: value for key, value in text.items() if key not in ("architectures", "model_type")}}


def _family_fields(model_type: str, fields: _ConfigFields) -> dict[str, Any]:
    """The per-family switches: biases, q/k norm and sliding window."""
    attention_bias = bool(fields.get("attention_bias", False))
    sliding = fields.get("sliding_window")
    if model_type in ("qwen2", "qwen2_vl", "qwen2_5_vl"):  # the VLMs' language model is Qwen2
        # Qwen2 always has q/k/v biases and no o_proj bias; its sliding_window is inert unless enabled.
        return {
            "qkv_bias": True,
            "o_proj_bias": False,
            "sliding_window": sliding if fields.get("use_sliding_window", False) else None,
        }
    if model_type == "qwen3":
        return {
            "qkv_bias": attention_bias,
            "o_proj_bias": attention_bias,
            "qk_norm": True,
            "sliding_window": sliding if fields.get("use_sliding_window", False) else None,
        }
    # Llama, Mistral and look-alikes.
    return {
        "qkv_bias": attention_bias,
        "o_proj_bias": attention_bias,
        "mlp_bias": bool(fields.get("mlp_bias", False)),
        "sliding_window": sliding,
    }


def _parse_checkpoint_dtype(fields: _ConfigFields, source: str) -> torch.dtype | None:
    name = fields.get("dtype", fields.get("torch_dtype"))
    if name is None:
        return None
    if not isinstance(name, str):
        raise ModelLoadError(f'{source}: dtype must be a string such as "bfloat16", got {name!r}')
    bare = name.removeprefix("torch.")
    if bare in _DTYPE_ALIASES:
        return _DTYPE_ALIASES[bare]
    dtype = getattr(torch, bare, None)
    if not isinstance(dtype, torch.dtype):
        raise ModelLoadError(f"{source}: unknown dtype {name!r}")
    return dtype


def _as_int(value: Any, name: str, source: str, positive: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelLoadError(f"{source}: field '{name}' must be an integer, got {value!r}")
    if positive and value < 1:
        raise ModelLoadError(f"{source}: field '{name}' must be positive, got {value}")
    return value


def _as_float(value: Any, name: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelLoadError(f"{source}: field '{name}' must be a number, got {value!r}")
    return float(value)


def _as_id_tuple(value: Any, name: str, source: str) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)
    raise ModelLoadError(f"{source}: field '{name}' must be an integer or a list of integers, got {value!r}")


def _first_set(*values: Any) -> Any:
    return next((value for value in values if value is not None), None)


def _opt_int(value: Any, name: str, source: str, positive: bool = False) -> int | None:
    return None if value is None else _as_int(value, name, source, positive)
