"""Quantization at load (`LLM(..., quantization="fp8" | "int8" | "int4" | "nvfp4")`): round-to-nearest
from an unquantized checkpoint (or random weights), layer by layer. Calibrated methods (GPTQ, AWQ,
static activation scales) are `forgellm quantize`'s job; this is the quick path."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from forgellm.errors import ConfigError
from forgellm.kernels.fp8_quant import FP8_DTYPE, FP8_MAX, quantize_fp8_weight
from forgellm.kernels.int_weight_gemm import e2m1_encode
from forgellm.layers.linear_method import CheckpointTensors, LinearMethod
from forgellm.quantization.config import QuantizationConfig
from forgellm.quantization.fp8 import Fp8Method
from forgellm.quantization.int_weight_only import IntWeightOnlyMethod
from forgellm.quantization.nvfp4 import NVFP4_GROUP, Nvfp4Method
from forgellm.quantization.parts import Fp4Part, Fp8Part, IntPart, require_divisible

if TYPE_CHECKING:
    from forgellm.layers.linear import LinearBase

ONLINE_SCHEMES = ("fp8", "int8", "int4", "nvfp4")
E2M1_MAX = 6.0


def _on_compute_device(weight: torch.Tensor) -> torch.Tensor:
    """The host-staged weight, moved to the GPU for the arithmetic (float32) when there is one."""
    return weight.to(device=torch.get_default_device(), dtype=torch.float32)


class RtnIntReader:
    """Symmetric round-to-nearest int codes per group of `group_size` inputs (None: per channel)."""

    dense = True

    def __init__(self, bits: int, group_size: int | None) -> None:
        self.bits, self.group_size = bits, group_size

    def checkpoint_tensors(self) -> CheckpointTensors:
        return CheckpointTensors(required=("weight",))

    def read(self, tensors: dict[str, torch.Tensor], prefix: str) -> IntPart:
        w = _on_compute_device(tensors["weight"])
        require_divisible(w.shape[1], self.group_size or w.shape[1], "input size", prefix)
        q, scales = rtn_int(w, self.bits, self.group_size)
        return IntPart(q, scales, None)


def rtn_int(
    w: torch.Tensor, bits: int, group_size: int | None, scale_dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric round-to-nearest of w [N, K]: (unsigned codes uint8 [N, K] with zero 2**(bits-1),
    scales [N, K // group] = amax / (2**(bits-1) - 1), rounded to `scale_dtype` before the codes are
    computed so that the stored scale is the one they were rounded with); group None: per channel."""
    n, k = w.shape
    group = group_size or k
    qmax = (1 << (bits - 1)) - 1
    grouped = w.float().view(n, k // group, group)
    scales = (grouped.abs().amax(dim=-1) / qmax).clamp_min(1e-8).to(scale_dtype)
    q = torch.round(grouped / scales.float().unsqueeze(-1)).clamp(-qmax - 1, qmax) + (1 << (bits - 1))
    return q.view(n, k).to(torch.uint8), scales


class RtnFp8Reader:
    """e4m3 weights with one scale per output channel."""

    dense = True

    def checkpoint_tensors(self) -> CheckpointTensors:
        return CheckpointTensors(required=("weight",))

    def read(self, tensors: dict[str, torch.Tensor], prefix: str) -> Fp8Part:
        weight, scale = quantize_fp8_weight(_on_compute_device(tensors["weight"]), "channel")
        return Fp8Part(weight, scale)


class RtnNvfp4Reader:
    """NVFP4 as ModelOpt makes it: global scale amax/(6*448), e4m3 scales per 16 inputs, e2m1 values."""

    dense = True

    def checkpoint_tensors(self) -> CheckpointTensors:
        return CheckpointTensors(required=("weight",))

    def read(self, tensors: dict[str, torch.Tensor], prefix: str) -> Fp4Part:
        w = _on_compute_device(tensors["weight"])
        require_divisible(w.shape[1], NVFP4_GROUP, "input size", prefix)
        codes, block, global_scale = rtn_nvfp4(w)
        return Fp4Part(codes, block.float() * global_scale)


def rtn_nvfp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest NVFP4 of w [N, K] (K a multiple of 16): (e2m1 codes uint8 [N, K], e4m3 block scales
    [N, K/16], the float32 global scale amax / (6 * 448)); a weight is e2m1(code) * block * global."""
    n, k = w.shape
    global_scale = (w.float().abs().amax() / (E2M1_MAX * FP8_MAX)).clamp_min(1e-12)
    grouped = w.float().view(n, k // NVFP4_GROUP, NVFP4_GROUP)
    block = (grouped.abs().amax(dim=-1) / E2M1_MAX / global_scale).clamp(max=FP8_MAX).to(FP8_DTYPE)
    scales = block.float() * global_scale
    codes = e2m1_encode(grouped / scales.clamp_min(1e-30).unsqueeze(-1)).view(n, k)
    return codes.to(torch.uint8), block, global_scale


class OnlineQuantConfig(QuantizationConfig):
    """Round-to-nearest quantization of every linear but the LM head, as the model loads."""

    def __init__(self, scheme: str, group_size: int | None = None, nvfp4_mode: str = "fp8") -> None:
        super().__init__(["lm_head"])
        self.name = scheme
        if scheme == "fp8":
            self.method: LinearMethod = Fp8Method(RtnFp8Reader(), "channel", "dynamic")
        elif scheme in ("int8", "int4"):
            bits = int(scheme[3:])
            # None: the scheme's default (int8 per channel, int4 groups of 128); -1: per channel.
            group = group_size if group_size is not None else (-1 if bits == 8 else 128)
            group = None if group == -1 else group
            if group is not None and group not in (32, 64, 128, 256):
                raise ConfigError(f"quantization_group_size must be 32, 64, 128, 256 or -1 (per channel), got {group}")
            self.method = IntWeightOnlyMethod(RtnIntReader(bits, group), bits, group, True)
        elif scheme == "nvfp4":
            self.method = Nvfp4Method(RtnNvfp4Reader(), nvfp4_mode)
        else:
            raise ConfigError(f"unknown quantization {scheme!r}; supported: {', '.join(ONLINE_SCHEMES)}")

    def quantized_method(self, layer: LinearBase) -> LinearMethod:
        return self.method

    def describe(self) -> str:
        return f"{self.method.describe()}, quantized at load"
