"""NVIDIA ModelOpt checkpoints (`export_hf_checkpoint`): hf_quant_config.json {"quantization":
{"quant_algo", "kv_cache_quant_algo", "exclude_modules", "group_size"}} or config.json's
quantization_config with quant_method "modelopt".

FP8: `weight` e4m3, `weight_scale` and `input_scale` float32 scalars (static activations).
NVFP4: `weight` u8 [N, K/2] (low nibble first), `weight_scale` e4m3 [N, K/16], `weight_scale_2` = the
global dequantization factor. W4A16_AWQ: `weight` u8 [N/2, K] (two int4 nibbles along the OUTPUT dim),
`weight_scale` [N, K/G], `pre_quant_scale` [K] where it was not folded into the preceding norm.
KV cache: `k_proj.k_scale`, `v_proj.v_scale`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from forgellm.errors import ModelLoadError
from forgellm.layers.linear_method import CheckpointTensors, LinearMethod
from forgellm.quantization.config import QuantizationConfig
from forgellm.quantization.formats.fp8_tensors import Fp8TensorReader
from forgellm.quantization.fp8 import Fp8Method
from forgellm.quantization.int_weight_only import IntWeightOnlyMethod
from forgellm.quantization.nvfp4 import NVFP4_GROUP, Nvfp4Method
from forgellm.quantization.parts import Fp4Part, IntPart, require_divisible, unpack_along_last

if TYPE_CHECKING:
    from forgellm.layers.linear import LinearBase

SUPPORTED_ALGOS = ("FP8", "NVFP4", "W4A16_AWQ")


class ModelOptNvfp4Reader:
    def checkpoint_tensors(self) -> CheckpointTensors:
        return CheckpointTensors(required=("weight", "weight_scale", "weight_scale_2"), optional=("input_scale",))

    def read(self, tensors: dict[str, torch.Tensor], prefix: str) -> Fp4Part:
        packed = tensors["weight"]
        codes = unpack_along_last(packed, 4, packed.shape[1] * 2).to(torch.uint8)
        require_divisible(codes.shape[1], NVFP4_GROUP, "input size", prefix)
        return Fp4Part(codes, tensors["weight_scale"].float() * tensors["weight_scale_2"].float().reshape(()))


class ModelOptAwqReader:
    """int4 values two per byte along the output dim (low nibble = even row), signed two's complement."""

    def checkpoint_tensors(self) -> CheckpointTensors:
        return CheckpointTensors(required=("weight", "weight_scale"), optional=("pre_quant_scale", "input_scale"))

    def read(self, tensors: dict[str, torch.Tensor], prefix: str) -> IntPart:
        packed = tensors["weight"]  # [N/2, K]
        signed = unpack_along_last(packed.t().contiguous(), 4, packed.shape[0] * 2).t()  # [N, K] nibbles
        codes = (signed + 8) & 15  # two's-complement int4 -> unsigned with the implicit zero 8
        scales = tensors["weight_scale"].float()
        require_divisible(codes.shape[1], codes.shape[1] // scales.shape[1], "input size", prefix)
        pre = tensors.get("pre_quant_scale")
        return IntPart(codes, scales, None, pre_scale=pre.float() if pre is not None else None)


def read_modelopt_config(raw: dict[str, Any], hf_quant_config: dict[str, Any] | None) -> dict[str, Any]:
    """The {"quant_algo", "kv_cache_quant_algo", "exclude_modules", "group_size"} view of either spelling."""
    if hf_quant_config is not None:
        return dict(hf_quant_config.get("quantization") or {})
    qc = raw.get("quantization_config") or {}
    out = {
        "quant_algo": qc.get("quant_algo"),
        "exclude_modules": qc.get("exclude_modules") or qc.get("ignore") or [],
        "group_size": qc.get("group_size"),
    }
    kv = qc.get("kv_cache_quant_algo") or (qc.get("kv_cache_scheme") or {}).get("quant_algo")
    out["kv_cache_quant_algo"] = kv
    return out


class ModelOptConfig(QuantizationConfig):
    """One algorithm for every linear outside `exclude_modules`."""

    name = "modelopt"

    def __init__(self, config: dict[str, Any], nvfp4_mode: str = "fp8") -> None:
        super().__init__(config.get("exclude_modules"))
        algo = str(config.get("quant_algo") or "").upper()
        if algo == "FP8":
            self.method: LinearMethod = Fp8Method(Fp8TensorReader(), "tensor", "static")
        elif algo == "NVFP4":
            self.method = Nvfp4Method(ModelOptNvfp4Reader(), nvfp4_mode)
        elif algo in ("W4A16_AWQ", "INT4_AWQ"):
            self.method = IntWeightOnlyMethod(ModelOptAwqReader(), 4, config.get("group_size") or 128, True)
        else:
            raise ModelLoadError(f"ModelOpt quant_algo {algo or None!r} is not supported; supported: {SUPPORTED_ALGOS}")
        kv = config.get("kv_cache_quant_algo")
        if kv:
            if str(kv).upper() != "FP8":
                raise NotImplementedError(f"ModelOpt kv_cache_quant_algo {kv!r} (only FP8)")
            self.kv_cache_dtype = "fp8"
        self.algo = algo

    def quantized_method(self, layer: LinearBase) -> LinearMethod:
        return self.method

    def describe(self) -> str:
        return f"modelopt {self.method.describe()}"
