"""LinearMethod: how a linear layer stores its weight, loads it from a checkpoint and computes x @ W^T.

A linear layer is made of one or more checkpoint projections ("parts": q/k/v of a fused qkv layer,
gate/up of a fused MLP, or just one). The method names the checkpoint tensors each part brings
(`weight`, or `weight_packed` + `weight_scale` + ..., any names), receives them one by one through
`load`, and turns them into the tensors its `apply` runs on in `finish_loading` (repacking, fusing
the parts' scales). Adding a quantization format is writing a LinearMethod; model code never changes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from forgellm.errors import ModelLoadError

if TYPE_CHECKING:
    from forgellm.layers.linear import LinearBase


@dataclass(frozen=True)
class CheckpointTensors:
    """The tensor names (suffixes after the part's prefix) a method loads for each part."""

    required: tuple[str, ...]
    optional: tuple[str, ...] = ()


class LinearMethod(ABC):
    """How a linear layer stores its weight and computes x @ W^T. Per-layer state lives on the layer."""

    @abstractmethod
    def create_weights(self, layer: LinearBase, dtype: torch.dtype) -> None:
        """Register what the layer holds before loading (its sizes are on the layer)."""

    @abstractmethod
    def checkpoint_tensors(self) -> CheckpointTensors:
        """The names this method loads for every part of a layer."""

    @abstractmethod
    def load(self, layer: LinearBase, name: str, loaded: torch.Tensor, part: int, ckpt_name: str) -> None:
        """Take one checkpoint tensor (`name` of part number `part`); `ckpt_name` is for error messages."""

    def finish_loading(self, layer: LinearBase) -> None:
        """Turn what `load` received into the tensors `apply` runs on (after every tensor is in)."""
        return None  # dense weights are loaded in place: nothing to repack

    @abstractmethod
    def apply(self, layer: LinearBase, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The projection of x [..., in] -> [..., out]."""

    def describe(self) -> str:
        """A short name for logs and /v1/models, e.g. "fp8 (channel weights, per-token activations)"."""
        return "unquantized"


class UnquantizedLinearMethod(LinearMethod):
    """Dense weights in the model dtype, copied straight into place; the matmul goes to cuBLAS / the CPU BLAS."""

    def create_weights(self, layer: LinearBase, dtype: torch.dtype) -> None:
        layer.weight = nn.Parameter(torch.empty(layer.output_size, layer.input_size, dtype=dtype), requires_grad=False)

    def checkpoint_tensors(self) -> CheckpointTensors:
        return CheckpointTensors(required=("weight",))

    def load(self, layer: LinearBase, name: str, loaded: torch.Tensor, part: int, ckpt_name: str) -> None:
        offset, size = layer.part_slice(part)
        copy_checked(layer.weight.narrow(0, offset, size), layer.rank_slice(loaded, part=part), ckpt_name)

    def apply(self, layer: LinearBase, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, layer.weight, bias)


UNQUANTIZED = UnquantizedLinearMethod()


def copy_checked(param: torch.Tensor, loaded: torch.Tensor, name: str) -> None:
    """Copy a checkpoint tensor into a parameter (slice), naming it if the shapes disagree."""
    if param.shape != loaded.shape:
        raise ModelLoadError(
            f"tensor {name!r} has shape {tuple(loaded.shape)} in the checkpoint but the model "
            f"expects {tuple(param.shape)}: does config.json match the weights?"
        )
    param.copy_(loaded)
