"""Weight-only integer quantization (W4A16, W8A16): packed int4/int8 weights, 16-bit activations.

Every checkpoint format is repacked into one internal layout (kernels/int_weight_gemm.py): codes packed
along K into int32 [K // pack, N], scales and zero points [K // G, N] in the activation dtype. GPTQ
act-order (`g_idx`) becomes a permutation of K: the weight's columns are sorted by group at load and
the kernel reads x through `perm`, so groups stay contiguous and the GEMM needs no gather of scales.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from forgellm import kernels
from forgellm.errors import ModelLoadError
from forgellm.kernels.int_weight_gemm import pack_int_weight
from forgellm.quantization.act_order import group_sorted_columns
from forgellm.quantization.parts import IntPart, PartReader
from forgellm.quantization.staged import (
    StagedLinearMethod,
    expect_parts,
    same_across_parts,
    set_split_k_counters,
    set_tensor,
)

if TYPE_CHECKING:
    from forgellm.layers.linear import LinearBase


class IntWeightOnlyMethod(StagedLinearMethod):
    """x @ W^T with W dequantized inside the GEMM from `bits`-bit codes in groups of `group_size` inputs."""

    def __init__(self, reader: PartReader, bits: int, group_size: int | None, symmetric: bool) -> None:
        super().__init__(reader)
        self.bits = bits
        self.group_size = group_size  # None: one group per output channel
        self.symmetric = symmetric

    def describe(self) -> str:
        group = f"group {self.group_size}" if self.group_size else "per channel"
        return f"int{self.bits} weight-only ({group}, {'symmetric' if self.symmetric else 'zero points'})"

    def build(self, layer: LinearBase, parts: list) -> None:
        expect_parts(parts, IntPart, layer.part_names)
        q = torch.cat([p.q for p in parts])
        scales = torch.cat([p.scales for p in parts])
        zeros = torch.cat([p.zeros for p in parts]) if parts[0].zeros is not None else None
        n, k = q.shape
        if (n, k) != (layer.output_size, layer.input_size):
            raise ModelLoadError(
                f"{layer.part_names[0]}: quantized weight is [{n}, {k}] but the model expects "
                f"[{layer.output_size}, {layer.input_size}]"
            )
        g_idx = same_across_parts([p.g_idx for p in parts], "g_idx (act-order)", layer.part_names)
        pre_scale = same_across_parts([p.pre_scale for p in parts], "pre_quant_scale", layer.part_names)
        group, perm = k // scales.shape[1], None
        if g_idx is not None and not torch.equal(g_idx.long(), torch.arange(k) // group):
            # Act-order (a tensor-parallel shard: ragged groups): columns sorted into equal groups, x read via perm.
            q, perm, group = group_sorted_columns(q, g_idx, zeros, self.bits, layer.part_names[0])
        elif group * scales.shape[1] != k:
            raise ModelLoadError(f"{layer.part_names[0]}: {scales.shape[1]} scale groups do not divide {k} inputs")
        device, dtype = layer.compute_device, layer.compute_dtype
        set_tensor(layer, "qweight", pack_int_weight(q, self.bits).to(device))
        set_tensor(layer, "scales", scales.t().contiguous().to(device=device, dtype=dtype))
        set_tensor(layer, "zeros", zeros.t().contiguous().to(device=device, dtype=dtype) if zeros is not None else None)
        set_tensor(layer, "perm", perm.to(device=device, dtype=torch.int32) if perm is not None else None)
        set_tensor(layer, "pre_scale", pre_scale.to(device=device, dtype=dtype) if pre_scale is not None else None)
        set_split_k_counters(layer, device)
        layer.group_size = group

    def apply(self, layer: LinearBase, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if layer.pre_scale is not None:
            x = x * layer.pre_scale
        flat = x.reshape(-1, x.shape[-1])
        y = kernels.int_weight_matmul(
            flat, layer.qweight, layer.scales, layer.zeros, self.bits, layer.group_size, "int", layer.perm,
            split_k_counters=layer.split_k_counters,
        )  # fmt: skip
        y = y.view(*x.shape[:-1], y.shape[-1])
        return y + bias if bias is not None else y
