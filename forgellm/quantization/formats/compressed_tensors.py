"""compressed-tensors (written by llmcompressor; read by vLLM, SGLang and transformers).

`quantization_config`: {"quant_method": "compressed-tensors", "format", "config_groups": {name:
{"targets", "weights": QArgs, "input_activations": QArgs | null, "format"?}}, "ignore", "kv_cache_scheme"}.
Formats: float-quantized (FP8), pack-quantized (int4/int8 weight-only, optional zero points and
act-order g_idx), nvfp4-pack-quantized.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import torch

from forgellm.errors import ModelLoadError
from forgellm.layers.linear_method import UNQUANTIZED, CheckpointTensors, LinearMethod
from forgellm.quantization.config import QuantizationConfig
from forgellm.quantization.formats.fp8_tensors import Fp8TensorReader
from forgellm.quantization.fp8 import Fp8Method
from forgellm.quantization.int_weight_only import IntWeightOnlyMethod
from forgellm.quantization.nvfp4 import NVFP4_GROUP, Nvfp4Method
from forgellm.quantization.parts import Fp4Part, IntPart, require_divisible, unpack_along_last

if TYPE_CHECKING:
    from forgellm.layers.linear import LinearBase

SUPPORTED = (
    "float-quantized FP8 (tensor, channel or block weights; dynamic token/group or static tensor activations), "
    "pack-quantized int4/int8 weight-only (group or channel, symmetric or with zero points, act-order), "
    "nvfp4-pack-quantized (NVFP4 and NVFP4A16, run weight-only)"
)


class PackedIntReader:
    """pack-quantized: `weight_packed` int32 [N, K*bits/32] (codes offset to unsigned), `weight_scale`
    [N, K/G], `weight_shape`; `weight_zero_point` packed along N when asymmetric; `weight_g_idx`."""

    def __init__(self, bits: int, symmetric: bool, act_order: bool) -> None:
        self.bits, self.symmetric, self.act_order = bits, symmetric, act_order

    def checkpoint_tensors(self) -> CheckpointTensors:
        required = ("weight_packed", "weight_scale")
        required += () if self.symmetric else ("weight_zero_point",)
        required += ("weight_g_idx",) if self.act_order else ()
        return CheckpointTensors(required=required, optional=("weight_shape",))

    def read(self, tensors: dict[str, torch.Tensor], prefix: str) -> IntPart:
        packed, scales = tensors["weight_packed"], tensors["weight_scale"].float()
        shape = tensors.get("weight_shape")
        n, k = (
            (int(v) for v in shape.tolist())
            if shape is not None
            else (packed.shape[0], packed.shape[1] * 32 // self.bits)
        )
        require_divisible(k, scales.shape[1], "input size", prefix)
        q = unpack_along_last(packed, self.bits, k)
        zeros = None
        if not self.symmetric:
            # Zero points are signed like the weights, stored offset to unsigned and packed along N.
            zeros = unpack_along_last(tensors["weight_zero_point"].t().contiguous(), self.bits, n).t().float()
        g_idx = tensors.get("weight_g_idx")
        return IntPart(q, scales, zeros, g_idx.long() if g_idx is not None else None)


class Nvfp4Reader:
    """nvfp4-pack-quantized: `weight_packed` u8 [N, K/2] (low nibble first), `weight_scale` e4m3 [N, K/16],
    `weight_global_scale` stored as the reciprocal of the dequantization factor."""

    def checkpoint_tensors(self) -> CheckpointTensors:
        return CheckpointTensors(
            required=("weight_packed", "weight_scale", "weight_global_scale"), optional=("input_global_scale",)
        )

    def read(self, tensors: dict[str, torch.Tensor], prefix: str) -> Fp4Part:
        packed = tensors["weight_packed"]
        codes = unpack_along_last(packed, 4, packed.shape[1] * 2).to(torch.uint8)
        require_divisible(codes.shape[1], NVFP4_GROUP, "input size", prefix)
        scales = tensors["weight_scale"].float() / tensors["weight_global_scale"].float().reshape(())
        return Fp4Part(codes, scales)


def _targets_match(targets: list[str], names: list[str]) -> bool:
    for target in targets:
        if target == "Linear":
            return True
        for name in names:
            if target.startswith("re:") and re.fullmatch(target[3:], name):
                return True
            if name == target:
                return True
    return False


def _method_for(group: dict[str, Any], default_format: str | None, nvfp4_mode: str) -> LinearMethod:
    weights = group.get("weights") or {}
    acts = group.get("input_activations")
    fmt = group.get("format") or default_format
    bits, kind, strategy = weights.get("num_bits"), weights.get("type", "int"), weights.get("strategy")
    if kind == "float" and bits == 8:
        if acts is not None and acts.get("type", "float") != "float":
            raise NotImplementedError(f"compressed-tensors FP8 weights with {acts.get('type')} activations")
        static = acts is not None and not acts.get("dynamic", True)
        if strategy == "block" and list(weights.get("block_structure") or [128, 128]) != [128, 128]:
            raise NotImplementedError(f"FP8 block structure {weights.get('block_structure')} (only 128x128)")
        return Fp8Method(Fp8TensorReader(), strategy or "tensor", "static" if static else "dynamic")
    if kind == "float" and bits == 4 and (fmt in (None, "nvfp4-pack-quantized")):
        return Nvfp4Method(Nvfp4Reader(), nvfp4_mode)
    if kind == "int" and bits in (4, 8) and acts is None:
        if strategy not in ("group", "channel"):
            raise ModelLoadError(
                f"compressed-tensors int{bits} strategy {strategy!r} is not supported; use group or channel"
            )
        if fmt not in (None, "pack-quantized"):
            raise ModelLoadError(
                f"compressed-tensors format {fmt!r} for int{bits} weights is not supported: {SUPPORTED}"
            )
        act_order = weights.get("actorder") == "group"
        reader = PackedIntReader(bits, weights.get("symmetric", True), act_order)
        group_size = weights.get("group_size") if strategy == "group" else None
        return IntWeightOnlyMethod(reader, bits, group_size, weights.get("symmetric", True))
    raise ModelLoadError(
        f"compressed-tensors scheme with {kind} {bits}-bit weights, strategy {strategy!r}, activations "
        f"{acts and (acts.get('type'), acts.get('num_bits'))} and format {fmt!r} is not supported; "
        f"supported: {SUPPORTED}"
    )


class CompressedTensorsConfig(QuantizationConfig):
    """Per-layer schemes from `config_groups`, the `ignore` list and `kv_cache_scheme`."""

    name = "compressed-tensors"

    def __init__(self, config: dict[str, Any], nvfp4_mode: str = "fp8") -> None:
        super().__init__(config.get("ignore"))
        groups = config.get("config_groups") or {}
        if not isinstance(groups, dict) or not groups:
            raise ModelLoadError("compressed-tensors quantization_config has no config_groups")
        self.groups = [
            (list(g.get("targets") or []), _method_for(g, config.get("format"), nvfp4_mode)) for g in groups.values()
        ]
        kv = config.get("kv_cache_scheme")
        if kv is not None:
            if kv.get("type") != "float" or kv.get("num_bits") != 8:
                raise NotImplementedError(f"compressed-tensors kv_cache_scheme {kv} (only 8-bit float: FP8)")
            self.kv_cache_dtype = "fp8"

    def quantized_method(self, layer: LinearBase) -> LinearMethod:
        for targets, method in self.groups:
            if _targets_match(targets, layer.part_names):
                return method
        return UNQUANTIZED

    def describe(self) -> str:
        return f"compressed-tensors {self.groups[0][1].describe()}"
