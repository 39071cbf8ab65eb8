"""NVFP4 weights (e2m1 values, an fp8 scale per 16 inputs, a float32 global scale) on Hopper.

Hopper has no FP4 tensor cores, so the activations stay 16-bit (W4A16; a checkpoint's
input_global_scale is not used) and the weight runs one of two ways:
- "weight_only": e2m1 codes packed like int4 (kernels/int_weight_gemm.py), dequantized in the GEMM:
  a quarter of bf16's bytes, the fastest at small batches;
- "fp8": dequantized once at load and re-quantized to e4m3 per channel, so large batches run on FP8
  tensor cores (twice the bytes of fp4, half of bf16).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from forgellm import kernels
from forgellm.kernels.fp8_quant import quantize_fp8_weight
from forgellm.kernels.int_weight_gemm import e2m1_decode, pack_int_weight
from forgellm.quantization.parts import Fp4Part, PartReader
from forgellm.quantization.staged import StagedLinearMethod, expect_parts, set_split_k_counters, set_tensor

if TYPE_CHECKING:
    from forgellm.layers.linear import LinearBase

NVFP4_GROUP = 16
NVFP4_MODES = ("weight_only", "fp8")


class Nvfp4Method(StagedLinearMethod):
    """NVFP4 weights run weight-only (fp4 dequantized in the GEMM) or converted to FP8 at load."""

    def __init__(self, reader: PartReader, mode: str = "fp8") -> None:
        super().__init__(reader)
        if mode not in NVFP4_MODES:
            raise ValueError(f"NVFP4 mode must be one of {NVFP4_MODES}, got {mode!r}")
        self.mode = mode

    def describe(self) -> str:
        return "nvfp4 (weight-only, 16-bit activations)" if self.mode == "weight_only" else "nvfp4 (run as fp8)"

    def build(self, layer: LinearBase, parts: list) -> None:
        expect_parts(parts, Fp4Part, layer.part_names)
        codes = torch.cat([p.codes for p in parts])
        scales = torch.cat([p.scales for p in parts])
        device = layer.compute_device
        set_split_k_counters(layer, device)
        if self.mode == "weight_only":
            set_tensor(layer, "qweight", pack_int_weight(codes, 4).to(device))
            set_tensor(layer, "scales", scales.t().contiguous().to(device=device, dtype=layer.compute_dtype))
            return
        weight = e2m1_decode(codes.to(device)) * scales.to(device).repeat_interleave(NVFP4_GROUP, dim=1)
        weight, scale = quantize_fp8_weight(weight, "channel")
        set_tensor(layer, "weight", weight)
        set_tensor(layer, "weight_scale", scale)

    def apply(self, layer: LinearBase, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.mode == "fp8":
            return kernels.fp8_linear(
                x, layer.weight, layer.weight_scale, weight_strategy="channel", act_strategy="token", bias=bias,
                split_k_counters=layer.split_k_counters,
            )  # fmt: skip
        flat = x.reshape(-1, x.shape[-1])
        y = kernels.int_weight_matmul(
            flat, layer.qweight, layer.scales, None, 4, NVFP4_GROUP, "e2m1", None,
            split_k_counters=layer.split_k_counters,
        )  # fmt: skip
        y = y.view(*x.shape[:-1], y.shape[-1])
        return y + bias if bias is not None else y
