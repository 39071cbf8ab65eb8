"""One linear weight [N, K] to its compressed-tensors tensors, plus the float weight they stand for.

The float ("fake-quantized") weight is what the calibration runner writes back into the model, so the
next layer calibrates on the inputs the quantized model will really give it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from forgellm.errors import ModelLoadError
from forgellm.kernels.fp8_quant import FP8_DTYPE, FP8_MAX, expand_scale, quantize_fp8_weight
from forgellm.kernels.int_weight_gemm import e2m1_decode, pack_int_weight
from forgellm.quantization.online import E2M1_MAX, rtn_int, rtn_nvfp4
from forgellm.quantization.quantize.schemes import FP8_BLOCK, NVFP4_GROUP, Scheme


@dataclass
class QuantizedWeight:
    """A part's checkpoint tensors (suffix after the module name -> tensor) and the float32 weight they give."""

    tensors: dict[str, torch.Tensor]
    dequantized: torch.Tensor


def check_group(name: str, in_features: int, group_size: int | None) -> None:
    """A group size that does not divide a layer's inputs is an error naming the layer."""
    if group_size and in_features % group_size:
        raise ModelLoadError(f"{name}: input size {in_features} is not divisible by the group size {group_size}")


def dequantize_codes(codes: torch.Tensor, scales: torch.Tensor, bits: int, g_idx: torch.Tensor | None = None):
    """float32 [N, K] of symmetric unsigned codes (zero 2**(bits-1)) with scales [N, G] (groups along K)."""
    n, k = codes.shape
    groups = g_idx.long() if g_idx is not None else torch.arange(k, device=codes.device) // (k // scales.shape[1])
    return (codes.float() - (1 << (bits - 1))) * scales.float()[:, groups]


def int_tensors(
    codes: torch.Tensor, scales: torch.Tensor, bits: int, g_idx: torch.Tensor | None = None
) -> QuantizedWeight:
    """pack-quantized tensors of symmetric codes [N, K] and their scales [N, G] (already in the stored dtype)."""
    n, k = codes.shape
    tensors = {
        "weight_packed": pack_int_weight(codes, bits).t().contiguous(),  # codes packed along K
        "weight_scale": scales,
        "weight_shape": torch.tensor([n, k], dtype=torch.int64),
    }
    if g_idx is not None:
        tensors["weight_g_idx"] = g_idx.to(torch.int32)
    return QuantizedWeight(tensors, dequantize_codes(codes, scales, bits, g_idx))


def fp8_tensors(w: torch.Tensor, strategy: str, scale_dtype: torch.dtype) -> QuantizedWeight:
    """float-quantized e4m3 weight with a per-tensor, per-channel or 128x128-block scale in `scale_dtype`."""
    _, scale = quantize_fp8_weight(w, strategy, FP8_BLOCK)
    # Round the scale to its stored dtype first, so that the codes are the ones that scale gives.
    scale = scale.to(scale_dtype).reshape(1) if strategy == "tensor" else scale.to(scale_dtype)
    expanded = expand_scale(scale.float().reshape(()) if strategy == "tensor" else scale.float(), w.shape, FP8_BLOCK)
    codes = (w.float() / expanded).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return QuantizedWeight({"weight": codes, "weight_scale": scale}, codes.float() * expanded)


def nvfp4_tensors(w: torch.Tensor) -> QuantizedWeight:
    """nvfp4-pack-quantized: e2m1 codes two per byte (low nibble first), e4m3 scales per 16 inputs and the
    global scale stored as compressed-tensors does, the reciprocal of the dequantization factor."""
    n, k = w.shape
    codes, block, global_scale = rtn_nvfp4(w)  # the same rounding as NVFP4 quantized at load
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    scales = block.float() * global_scale
    dequantized = (e2m1_decode(codes).view(n, k // NVFP4_GROUP, NVFP4_GROUP) * scales.unsqueeze(-1)).view(n, k)
    stored_global = (1.0 / global_scale).reshape(1)  # compressed-tensors divides by it
    tensors = {"weight_packed": packed, "weight_scale": block, "weight_global_scale": stored_global}
    return QuantizedWeight(tensors, dequantized)


def input_scale_tensors(scheme: Scheme, input_amax: float) -> dict[str, torch.Tensor]:
    """The static activation scale a calibrated scheme stores for a layer whose inputs reached `input_amax`."""
    amax = max(input_amax, 1e-12)
    if scheme.activations == "static":
        return {"input_scale": torch.tensor([amax / FP8_MAX], dtype=torch.float32)}
    if scheme.activations == "nvfp4":
        return {"input_global_scale": torch.tensor([E2M1_MAX * FP8_MAX / amax], dtype=torch.float32)}
    return {}


def quantize_rtn(name: str, w: torch.Tensor, scheme: Scheme, group_size: int | None, scale_dtype: torch.dtype):
    """Round-to-nearest quantization of one part `name` (for messages) under `scheme`."""
    if scheme.weights == "fp8":
        return fp8_tensors(w, scheme.weight_strategy, scale_dtype)
    check_group(name, w.shape[1], NVFP4_GROUP if scheme.weights == "nvfp4" else group_size)
    if scheme.weights == "nvfp4":
        return nvfp4_tensors(w)
    codes, scales = rtn_int(w, scheme.bits, group_size, scale_dtype=scale_dtype)
    return int_tensors(codes, scales, scheme.bits)
