"""Hugging Face fine-grained FP8 (DeepSeek-V3, Qwen3-FP8): `quant_method: "fp8"`, `weight_block_size`
[128, 128], tensors `weight` e4m3 and `weight_scale_inv` [N/128, K/128] (a multiplier despite its
name); activations quantized dynamically per token group of 128."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from forgellm.errors import ModelLoadError
from forgellm.layers.linear_method import LinearMethod
from forgellm.quantization.config import QuantizationConfig
from forgellm.quantization.formats.fp8_tensors import Fp8TensorReader
from forgellm.quantization.fp8 import Fp8Method

if TYPE_CHECKING:
    from forgellm.layers.linear import LinearBase


class HfFp8Config(QuantizationConfig):
    """FP8 with 128x128 block scales for every linear outside `modules_to_not_convert`."""

    name = "fp8"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__([*(config.get("modules_to_not_convert") or []), "lm_head"])
        block = config.get("weight_block_size")
        scheme = config.get("activation_scheme", "dynamic")
        if scheme not in ("dynamic", "static"):
            raise ModelLoadError(f"fp8 activation_scheme {scheme!r} is not supported; supported: dynamic, static")
        if block is not None and list(block) != [128, 128]:
            raise NotImplementedError(f"fp8 weight_block_size {block} (only [128, 128])")
        strategy = "block" if block is not None else "tensor"
        self.method = Fp8Method(
            Fp8TensorReader("weight_scale_inv"), strategy, "static" if scheme == "static" else "dynamic"
        )

    def quantized_method(self, layer: LinearBase) -> LinearMethod:
        return self.method

    def describe(self) -> str:
        return f"fp8 {self.method.describe()}"
