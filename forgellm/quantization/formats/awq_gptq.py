"""AutoAWQ GEMM and GPTQ (v1 and v2) checkpoints: int4/int8 weight-only with zero points.

AWQ (`quant_method: "awq"`, version gemm): `qweight` int32 [K, N/8] packed along N in the order
[0, 2, 4, 6, 1, 3, 5, 7], `qzeros` [K/G, N/8] likewise, `scales` [K/G, N]; w = (q - z) * s.
GPTQ (`quant_method: "gptq"`): `qweight` int32 [K*bits/32, N] packed along K, `qzeros` [K/G, N*bits/32]
packed along N, `scales` [K/G, N], `g_idx` [K]; v1 (`checkpoint_format: "gptq"`) stores zero - 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from forgellm.errors import ModelLoadError
from forgellm.layers.linear_method import CheckpointTensors, LinearMethod
from forgellm.quantization.config import QuantizationConfig
from forgellm.quantization.int_weight_only import IntWeightOnlyMethod
from forgellm.quantization.parts import IntPart, unpack_along_last

if TYPE_CHECKING:
    from forgellm.layers.linear import LinearBase

# Where AWQ put column j of each group of 8: nibble i of a word holds column _AWQ_ORDER[i].
_AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
_AWQ_UNDO = tuple(sorted(range(8), key=lambda i: _AWQ_ORDER[i]))  # nibble index of each column


def _unpack_awq(packed: torch.Tensor) -> torch.Tensor:
    """[rows, N/8] int32 in AWQ's interleaved order -> [rows, N] codes in column order."""
    rows, words = packed.shape
    nibbles = unpack_along_last(packed, 4, words * 8).view(rows, words, 8)
    return nibbles[..., list(_AWQ_UNDO)].reshape(rows, words * 8)


class AwqReader:
    def checkpoint_tensors(self) -> CheckpointTensors:
        return CheckpointTensors(required=("qweight", "qzeros", "scales"))

    def read(self, tensors: dict[str, torch.Tensor], prefix: str) -> IntPart:
        q = _unpack_awq(tensors["qweight"]).t()
        zeros = _unpack_awq(tensors["qzeros"]).t().float()
        return IntPart(q.contiguous(), tensors["scales"].float().t().contiguous(), zeros)


class GptqReader:
    def __init__(self, bits: int, zero_offset: int) -> None:
        self.bits, self.zero_offset = bits, zero_offset

    def checkpoint_tensors(self) -> CheckpointTensors:
        return CheckpointTensors(required=("qweight", "qzeros", "scales"), optional=("g_idx",))

    def read(self, tensors: dict[str, torch.Tensor], prefix: str) -> IntPart:
        qweight, scales = tensors["qweight"], tensors["scales"].float()
        k, n = qweight.shape[0] * 32 // self.bits, qweight.shape[1]
        q = unpack_along_last(qweight.t().contiguous(), self.bits, k)
        zeros = (unpack_along_last(tensors["qzeros"], self.bits, n) + self.zero_offset) & ((1 << self.bits) - 1)
        g_idx = tensors.get("g_idx")
        return IntPart(
            q, scales.t().contiguous(), zeros.t().float().contiguous(), g_idx.long() if g_idx is not None else None
        )


class AwqGptqConfig(QuantizationConfig):
    """One int weight-only method for every linear outside `modules_to_not_convert`."""

    def __init__(self, config: dict[str, Any]) -> None:
        # Neither tool quantizes the LM head; modules_to_not_convert lists further exceptions.
        super().__init__([*(config.get("modules_to_not_convert") or []), "lm_head"])
        self.name = method = config.get("quant_method")
        bits = config.get("bits", config.get("w_bit"))
        group = config.get("group_size", config.get("q_group_size", 128))
        if bits not in (4, 8) or (method == "awq" and bits != 4):
            raise ModelLoadError(
                f"{method} with {bits}-bit weights is not supported (int4{'' if method == 'awq' else ' or int8'})"
            )
        group_size = None if group in (-1, None) else int(group)
        if method == "awq":
            version = str(config.get("version", "gemm")).lower()
            if version != "gemm":
                raise ModelLoadError(f"AWQ version {version!r} is not supported; supported: gemm")
            if not config.get("zero_point", True):
                raise ModelLoadError("AWQ without zero points is not supported (AutoAWQ GEMM writes them)")
            self.method: LinearMethod = IntWeightOnlyMethod(AwqReader(), 4, group_size, False)
        else:
            fmt = str(config.get("checkpoint_format", "gptq")).lower()
            if fmt not in ("gptq", "gptq_v2"):
                raise ModelLoadError(f"GPTQ checkpoint_format {fmt!r} is not supported; supported: gptq, gptq_v2")
            reader = GptqReader(bits, 1 if fmt == "gptq" else 0)
            self.method = IntWeightOnlyMethod(reader, bits, group_size, bool(config.get("sym", True)))

    def quantized_method(self, layer: LinearBase) -> LinearMethod:
        return self.method

    def describe(self) -> str:
        return f"{self.name} {self.method.describe()}"
