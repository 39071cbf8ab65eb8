"""The FP8 tensors every format stores alike: an e4m3 `weight`, its scale under the format's name
(`weight_scale`, HF's `weight_scale_inv`), and an optional static `input_scale`."""

from __future__ import annotations

import torch

from forgellm.layers.linear_method import CheckpointTensors
from forgellm.quantization.parts import Fp8Part


class Fp8TensorReader:
    """Reads `weight` + `<scale_name>` (+ `input_scale`) into an Fp8Part; scalars become 0-d."""

    def __init__(self, scale_name: str = "weight_scale") -> None:
        self.scale_name = scale_name

    def checkpoint_tensors(self) -> CheckpointTensors:
        return CheckpointTensors(required=("weight", self.scale_name), optional=("input_scale",))

    def read(self, tensors: dict[str, torch.Tensor], prefix: str) -> Fp8Part:
        scale = tensors[self.scale_name].float()
        if scale.numel() == 1 and scale.dim() < 2:
            scale = scale.reshape(())
        elif scale.dim() == 1:
            scale = scale.reshape(-1, 1)  # a per-channel scale saved flat
        input_scale = tensors.get("input_scale")
        return Fp8Part(tensors["weight"], scale, input_scale.float().reshape(()) if input_scale is not None else None)
