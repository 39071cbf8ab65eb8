"""FP8 W8A8 (e4m3): fp8 weights with per-tensor, per-channel or 128x128 block scales; activations
quantized dynamically per token (per token group of 128 with block weights) or statically with the
checkpoint's input_scale. kernels.fp8_linear picks cuBLASLt or the Triton GEMM per call."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from forgellm import kernels
from forgellm.errors import ModelLoadError
from forgellm.quantization.parts import Fp8Part, PartReader
from forgellm.quantization.staged import StagedLinearMethod, expect_parts, set_split_k_counters, set_tensor

if TYPE_CHECKING:
    from forgellm.layers.linear import LinearBase

FP8_MIN_CAPABILITY = (8, 9)  # Ada and Hopper have FP8 tensor cores


def check_fp8_support(device: torch.device) -> None:
    """A typed error when `device` is a GPU without FP8 tensor cores (compute capability below 8.9)."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < FP8_MIN_CAPABILITY:
            raise ModelLoadError(
                f"FP8 needs a GPU of compute capability 8.9 or newer (Ada, Hopper); this one is {major}.{minor}. "
                "Use a weight-only scheme (int8, int4) instead"
            )


class Fp8Method(StagedLinearMethod):
    """FP8 weights and activations; `activations` is "dynamic" (per token / token group) or "static"."""

    def __init__(self, reader: PartReader, weight_strategy: str, activations: str, block: tuple[int, int] = (128, 128)):
        super().__init__(reader)
        self.weight_strategy = weight_strategy  # of the checkpoint: tensor, channel or block
        self.activations = activations
        self.block = block

    def describe(self) -> str:
        acts = "static per-tensor" if self.activations == "static" else "dynamic per-token"
        if self.weight_strategy == "block":
            acts = f"dynamic per-token-group {self.block[1]}"
        return f"fp8 ({self.weight_strategy} weights, {acts} activations)"

    def create_weights(self, layer: LinearBase, dtype: torch.dtype) -> None:
        check_fp8_support(torch.get_default_device())
        super().create_weights(layer, dtype)

    def build(self, layer: LinearBase, parts: list) -> None:
        expect_parts(parts, Fp8Part, layer.part_names)
        device = layer.compute_device
        set_tensor(layer, "weight", torch.cat([p.weight for p in parts]).to(device))
        scales = [p.scale.float().reshape(p.scale.shape if p.scale.dim() == 2 else ()) for p in parts]
        if self.weight_strategy == "block":
            bn = self.block[0]
            for p, prefix in zip(parts[:-1], layer.part_names):
                if p.weight.shape[0] % bn:
                    raise ModelLoadError(f"{prefix}: {p.weight.shape[0]} outputs are not whole {bn}-row blocks")
            strategy, scale = "block", torch.cat(scales)
        elif len(parts) == 1 and scales[0].dim() == 0:
            strategy, scale = "tensor", scales[0]
        else:
            # Fused parts with their own per-tensor scales are exactly a per-channel scale.
            rows = [s.expand(p.weight.shape[0], 1) if s.dim() == 0 else s.reshape(-1, 1) for s, p in zip(scales, parts)]
            strategy, scale = "channel", torch.cat(rows)
        set_tensor(layer, "weight_scale", scale.contiguous().to(device))
        layer.fp8_weight_strategy = strategy
        set_split_k_counters(layer, device)
        set_tensor(layer, "input_scale", None)
        if self.activations == "static":
            missing = [prefix for p, prefix in zip(parts, layer.part_names) if p.input_scale is None]
            if missing:
                raise ModelLoadError(f"static FP8 activations need an input_scale; missing for {missing}")
            # The parts share one input: its largest scale covers each part's range.
            set_tensor(
                layer, "input_scale", torch.stack([p.input_scale.float().reshape(()) for p in parts]).amax().to(device)
            )

    def apply(self, layer: LinearBase, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if layer.input_scale is not None:
            act = "static"
        else:
            act = "group" if layer.fp8_weight_strategy == "block" else "token"
        return kernels.fp8_linear(
            x,
            layer.weight,
            layer.weight_scale,
            input_scale=layer.input_scale,
            weight_strategy=layer.fp8_weight_strategy,
            act_strategy=act,
            bias=bias,
            block=self.block,
            split_k_counters=layer.split_k_counters,
        )
