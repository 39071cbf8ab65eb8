"""The schemes `forgellm quantize` writes, and the compressed-tensors `quantization_config` of each.

Names and settings follow llmcompressor's presets (FP8, FP8_DYNAMIC, FP8_BLOCK, W4A16, W8A16, NVFP4,
NVFP4A16), so a checkpoint from either tool reads the same to vLLM, SGLang, transformers and forgellm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from forgellm.errors import ConfigError


@dataclass(frozen=True)
class Scheme:
    """One scheme: the weights' kind, how activations are quantized, and the algorithm that picks the codes."""

    name: str
    weights: str  # "int4" | "int8" | "fp8" | "nvfp4"
    weight_strategy: str  # int: "group" | "channel"; fp8: "tensor" | "channel" | "block"; nvfp4: "tensor_group"
    activations: str | None  # None (weight-only), "static", "token", "group" (dynamic) or "nvfp4"
    algorithm: str = "rtn"  # "rtn" | "gptq" | "awq"
    default_group_size: int | None = None

    @property
    def calibrated(self) -> bool:
        """Whether the scheme needs calibration activations (else it runs tensor by tensor)."""
        return self.algorithm != "rtn" or self.activations in ("static", "nvfp4")

    @property
    def bits(self) -> int:
        return {"int4": 4, "int8": 8, "fp8": 8, "nvfp4": 4}[self.weights]


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme("fp8", "fp8", "tensor", "static"),
        Scheme("fp8-dynamic", "fp8", "channel", "token"),
        Scheme("fp8-block", "fp8", "block", "group"),
        Scheme("w8a16", "int8", "channel", None),
        Scheme("w4a16-rtn", "int4", "group", None, "rtn", 128),
        Scheme("w4a16-gptq", "int4", "group", None, "gptq", 128),
        Scheme("w4a16-awq", "int4", "group", None, "awq", 128),
        Scheme("nvfp4", "nvfp4", "tensor_group", "nvfp4"),
        Scheme("nvfp4a16", "nvfp4", "tensor_group", None),
    )
}
FP8_BLOCK = (128, 128)
NVFP4_GROUP = 16


def get_scheme(name: str) -> Scheme:
    """The scheme called `name`, or a ConfigError listing the ones there are."""
    if name not in SCHEMES:
        raise ConfigError(f"unknown scheme {name!r}; supported: {', '.join(SCHEMES)}")
    return SCHEMES[name]


def _args(num_bits: int, kind: str, strategy: str, **extra: Any) -> dict[str, Any]:
    """compressed-tensors QuantizationArgs, spelled out as llmcompressor writes them."""
    args: dict[str, Any] = {
        "actorder": None, "block_structure": None, "dynamic": False, "group_size": None, "num_bits": num_bits,
        "observer": "minmax", "observer_kwargs": {}, "scale_dtype": None, "strategy": strategy,
        "symmetric": True, "type": kind, "zp_dtype": None,
    }  # fmt: skip
    args.update(extra)
    return args


def weight_args(scheme: Scheme, group_size: int | None, act_order: bool) -> dict[str, Any]:
    """The `weights` QuantizationArgs of `scheme`."""
    if scheme.weights == "fp8":
        block = list(FP8_BLOCK) if scheme.weight_strategy == "block" else None
        return _args(8, "float", scheme.weight_strategy, block_structure=block)
    if scheme.weights == "nvfp4":
        return _args(4, "float", "tensor_group", group_size=NVFP4_GROUP)
    strategy = "group" if group_size else "channel"
    return _args(scheme.bits, "int", strategy, group_size=group_size, actorder="weight" if act_order else None)


def activation_args(scheme: Scheme) -> dict[str, Any] | None:
    """The `input_activations` QuantizationArgs of `scheme` (None: weight-only)."""
    if scheme.activations is None:
        return None
    if scheme.activations == "nvfp4":
        return _args(4, "float", "tensor_group", group_size=NVFP4_GROUP, dynamic="local")
    if scheme.activations == "static":
        return _args(8, "float", "tensor")
    group = FP8_BLOCK[1] if scheme.activations == "group" else None
    return _args(8, "float", scheme.activations, dynamic=True, observer=None, group_size=group)


def checkpoint_format(scheme: Scheme) -> str:
    """compressed-tensors' name for how the weights are stored."""
    return {"fp8": "float-quantized", "nvfp4": "nvfp4-pack-quantized"}.get(scheme.weights, "pack-quantized")


def quantization_config(
    scheme: Scheme, group_size: int | None, ignore: list[str], act_order: bool = False, kv_cache_fp8: bool = False
) -> dict[str, Any]:
    """config.json's `quantization_config` for a checkpoint written with `scheme`."""
    fmt = checkpoint_format(scheme)
    group = {
        "format": fmt,
        "input_activations": activation_args(scheme),
        "output_activations": None,
        "targets": ["Linear"],
        "weights": weight_args(scheme, group_size, act_order),
    }
    return {
        "config_groups": {"group_0": group},
        "format": fmt,
        "ignore": ignore,
        "kv_cache_scheme": _args(8, "float", "tensor") if kv_cache_fp8 else None,
        "quant_method": "compressed-tensors",
        "quantization_status": "compressed",
    }
