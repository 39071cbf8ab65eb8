"""What a checkpoint format hands a quantized method, per part of a layer, in one canonical form.

Each format (compressed-tensors, ModelOpt, AWQ, GPTQ, HF fp8, or quantization at load) has a
`PartReader` that turns the tensors it stored for one projection into one of these; the method then
fuses the parts and packs them into the layout its kernel runs on. So a format is a few lines of
unpacking, and a scheme never knows which tool wrote the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from forgellm.errors import ModelLoadError
from forgellm.layers.linear_method import CheckpointTensors


@dataclass
class IntPart:
    """Integer weight codes: w[n, k] = (q[n, k] - zeros[n, g]) * scales[n, g], g = g_idx[k] (else k // G)."""

    q: torch.Tensor  # [N, K], unsigned codes in [0, 2**bits)
    scales: torch.Tensor  # [N, K // G] float32
    zeros: torch.Tensor | None  # [N, K // G] float32 (unsigned zero points); None = symmetric, 2**(bits-1)
    g_idx: torch.Tensor | None = None  # [K] group of each input column (GPTQ act-order)
    pre_scale: torch.Tensor | None = None  # [K]: x is multiplied by it first (AWQ's pre_quant_scale)


@dataclass
class Fp8Part:
    """e4m3 weight and its scale: 0-d (tensor), [N, 1] (channel) or [N/bn, K/bk] (block)."""

    weight: torch.Tensor  # [N, K] float8_e4m3fn
    scale: torch.Tensor  # float32
    input_scale: torch.Tensor | None = None  # 0-d float32: static per-tensor activation scale


@dataclass
class Fp4Part:
    """NVFP4 weight: w[n, k] = e2m1(codes[n, k]) * scales[n, k // 16] (fp8 block scale x global scale)."""

    codes: torch.Tensor  # [N, K] uint8 in [0, 16)
    scales: torch.Tensor  # [N, K // 16] float32


class PartReader(Protocol):
    """Turns the checkpoint tensors of one projection into a canonical part."""

    def checkpoint_tensors(self) -> CheckpointTensors:
        """The tensor names it reads (suffixes after the projection's name)."""
        ...

    def read(self, tensors: dict[str, torch.Tensor], prefix: str) -> IntPart | Fp8Part | Fp4Part:
        """The part made of `tensors` (name -> tensor) of the projection called `prefix`."""
        ...


def unpack_along_last(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Codes packed densely along the last dim of an int32 (or uint8) tensor, element i at bit i*bits:
    [..., count * bits / width] -> int32 [..., count]."""
    width = packed.element_size() * 8
    per_word = width // bits
    wide = packed.to(torch.int64) & ((1 << width) - 1)  # read int32 words as unsigned
    shifts = torch.arange(per_word, device=packed.device) * bits
    codes = (wide.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return codes.flatten(-2)[..., :count].to(torch.int32)


def require_divisible(size: int, group: int, what: str, prefix: str) -> None:
    """A typed error when a dimension does not split into whole groups."""
    if group <= 0 or size % group:
        raise ModelLoadError(f"{prefix}: {what} {size} is not divisible by the group size {group}")
