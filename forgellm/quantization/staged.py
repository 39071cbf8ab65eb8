"""StagedLinearMethod: the common loading of every quantized scheme.

Checkpoint tensors are kept on the host as they arrive; once all are in, the format's PartReader
turns each part into a canonical part and the scheme fuses and packs them onto the compute device.
Quantizing at load reads a dense `weight` the same way, kept on the host so that the GPU never holds
the unquantized model.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING

import torch
from torch import nn

from forgellm.errors import ModelLoadError
from forgellm.layers.linear_method import CheckpointTensors, LinearMethod, copy_checked
from forgellm.quantization.parts import Fp4Part, Fp8Part, IntPart, PartReader
from forgellm.quantization.sharding import shard_part

if TYPE_CHECKING:
    from forgellm.layers.linear import LinearBase


class StagedLinearMethod(LinearMethod):
    """Stages a layer's checkpoint tensors, then `build`s the scheme's tensors from canonical parts."""

    def __init__(self, reader: PartReader) -> None:
        self.reader = reader
        # Quantization at load: the reader takes the dense `weight`, kept on the host until finish_loading.
        self.dense = getattr(reader, "dense", False)

    def create_weights(self, layer: LinearBase, dtype: torch.dtype) -> None:
        layer.compute_dtype = dtype
        layer.compute_device = torch.get_default_device()
        layer.staged = {}
        if self.dense:
            # Quantization at load: a host-side dense weight the loader (or random init) fills.
            layer.weight = nn.Parameter(
                torch.empty(layer.output_size, layer.input_size, dtype=dtype, device="cpu"), requires_grad=False
            )

    def checkpoint_tensors(self) -> CheckpointTensors:
        return self.reader.checkpoint_tensors()

    def load(self, layer: LinearBase, name: str, loaded: torch.Tensor, part: int, ckpt_name: str) -> None:
        if name == "weight" and self.dense:
            offset, size = layer.part_slice(part)
            copy_checked(layer.weight.narrow(0, offset, size), layer.rank_slice(loaded, part=part), ckpt_name)
        else:
            layer.staged[(name, part)] = loaded

    def finish_loading(self, layer: LinearBase) -> None:
        if not hasattr(layer, "staged"):
            return  # already built
        parts = []
        for part, prefix in enumerate(layer.part_names):
            tensors = {name: tensor for (name, index), tensor in layer.staged.items() if index == part}
            if self.dense:
                offset, size = layer.part_slice(part)
                tensors["weight"] = layer.weight.narrow(0, offset, size)
            with torch.device(layer.compute_device):  # quantizing at load runs on the GPU, one part at a time
                canonical = self.reader.read(tensors, prefix)
            # Checkpoints hold whole projections: this rank keeps its share (the dense weight is sliced already).
            sharded = layer.parallel.tp_size > 1 and not self.dense
            parts.append(shard_part(layer, canonical, part, prefix) if sharded else canonical)
        del layer.staged
        if self.dense:
            del layer.weight
        with torch.no_grad():
            self.build(layer, parts)

    @abstractmethod
    def build(self, layer: LinearBase, parts: list) -> None:
        """Fuse the canonical parts and register the tensors `apply` runs on (on layer.compute_device)."""


def set_tensor(layer: nn.Module, name: str, tensor: torch.Tensor | None) -> None:
    """Register a built tensor as a (non-checkpoint) buffer: it follows the module and counts as weight memory."""
    layer.register_buffer(name, tensor, persistent=False)


def set_split_k_counters(layer: nn.Module, device: torch.device) -> None:
    """The layer's tile counters for its Triton GEMM's in-kernel split-K sum (one launch, not two, at small M);
    None off CUDA, where the references run."""
    counters = None
    if device.type == "cuda":
        from forgellm.kernels.triton_utils import split_k_counters  # here: CPU processes load no kernels.triton_*

        counters = split_k_counters(device)
    set_tensor(layer, "split_k_counters", counters)


def expect_parts(parts: list, kind: type, prefixes: list[str]) -> None:
    """A typed error when a reader produced the wrong kind of part (a config naming the wrong scheme)."""
    for part, prefix in zip(parts, prefixes):
        if not isinstance(part, kind):
            raise ModelLoadError(
                f"{prefix}: expected {kind.__name__} weights, the checkpoint gave {type(part).__name__}"
            )


def same_across_parts(values: list[torch.Tensor | None], what: str, prefixes: list[str]) -> torch.Tensor | None:
    """The one value every part shares (fused parts see one input), or a typed error if they differ."""
    first = values[0]
    for value, prefix in zip(values[1:], prefixes[1:]):
        if (value is None) != (first is None) or (value is not None and not torch.equal(value, first)):
            raise ModelLoadError(
                f"{prefix}: its {what} differs from {prefixes[0]}'s, but forgellm fuses them into one matmul"
            )
    return first


__all__ = [
    "Fp4Part",
    "Fp8Part",
    "IntPart",
    "StagedLinearMethod",
    "expect_parts",
    "same_across_parts",
    "set_split_k_counters",
    "set_tensor",
]
