"""Tensor-parallel-aware linear layers that delegate weights and matmul to a LinearMethod.

Adding a quantization format means writing a LinearMethod; model code never changes.
With tp_size 1 (the ordinary case) every layer holds the whole weight.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from forgellm.distributed import SINGLE_DEVICE, ParallelContext
from forgellm.errors import ModelLoadError


class LinearMethod(ABC):
    """How a linear layer stores its weight and computes x @ W^T."""

    @abstractmethod
    def create_weights(self, layer: nn.Module, input_size: int, output_size: int, dtype: torch.dtype) -> None:
        """Register the layer's parameters for a [output_size, input_size] projection."""

    @abstractmethod
    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """Compute the projection of x."""


class UnquantizedLinearMethod(LinearMethod):
    """Plain dense weights in the model dtype; the matmul goes to cuBLAS / the CPU BLAS."""

    def create_weights(self, layer: nn.Module, input_size: int, output_size: int, dtype: torch.dtype) -> None:
        layer.weight = nn.Parameter(torch.empty(output_size, input_size, dtype=dtype), requires_grad=False)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, layer.weight, bias)


def copy_checked(param: torch.Tensor, loaded: torch.Tensor, name: str) -> None:
    """Copy a checkpoint tensor into a parameter (slice), naming it if the shapes disagree."""
    if param.shape != loaded.shape:
        raise ModelLoadError(
            f"tensor {name!r} has shape {tuple(loaded.shape)} in the checkpoint but the model "
            f"expects {tuple(param.shape)}: does config.json match the weights?"
        )
    param.copy_(loaded)


class _ParallelLinear(nn.Module):
    """Shared parts: the method, the bias, and the dims this rank holds."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool,
        dtype: torch.dtype,
        parallel: ParallelContext,
        method: LinearMethod | None,
    ) -> None:
        super().__init__()
        self.parallel = parallel
        self.method = method or UnquantizedLinearMethod()
        self.method.create_weights(self, input_size, output_size, dtype)
        self.bias = nn.Parameter(torch.empty(output_size, dtype=dtype), requires_grad=False) if bias else None

    def _shard(self, loaded: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's slice of a full checkpoint tensor along `dim`."""
        size = loaded.shape[dim] // self.parallel.tp_size
        return loaded.narrow(dim, self.parallel.tp_rank * size, size)


class ColumnParallelLinear(_ParallelLinear):
    """y = x W^T with W's output rows split across ranks (each rank yields a slice of y)."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        bias: bool = False,
        dtype: torch.dtype,
        parallel: ParallelContext = SINGLE_DEVICE,
        method: LinearMethod | None = None,
    ) -> None:
        super().__init__(input_size, output_size // parallel.tp_size, bias, dtype, parallel, method)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.apply(self, x, self.bias)

    def load(self, param_name: str, loaded: torch.Tensor, shard: str | int | None, ckpt_name: str) -> None:
        """Load a full checkpoint tensor into this rank's slice."""
        copy_checked(getattr(self, param_name), self._shard(loaded, 0), ckpt_name)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections of the same input fused into one matmul (e.g. gate|up)."""

    def __init__(
        self,
        input_size: int,
        output_sizes: list[int],
        *,
        bias: bool = False,
        dtype: torch.dtype,
        parallel: ParallelContext = SINGLE_DEVICE,
        method: LinearMethod | None = None,
    ) -> None:
        super().__init__(input_size, sum(output_sizes), bias=bias, dtype=dtype, parallel=parallel, method=method)
        self.output_sizes = [size // parallel.tp_size for size in output_sizes]

    def shard_ids(self) -> list[int | str]:
        return list(range(len(self.output_sizes)))

    def _slice_of(self, shard: int | str) -> tuple[int, int]:
        index = int(shard)
        return sum(self.output_sizes[:index]), self.output_sizes[index]

    def load(self, param_name: str, loaded: torch.Tensor, shard: str | int | None, ckpt_name: str) -> None:
        offset, size = self._slice_of(shard)
        target = getattr(self, param_name).narrow(0, offset, size)
        copy_checked(target, self._shard(loaded, 0), ckpt_name)


class QKVParallelLinear(MergedColumnParallelLinear):
    """q, k and v projections fused into one matmul; shards are named "q", "k", "v"."""

    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        num_heads: int,
        num_kv_heads: int,
        *,
        bias: bool = False,
        dtype: torch.dtype,
        parallel: ParallelContext = SINGLE_DEVICE,
        method: LinearMethod | None = None,
    ) -> None:
        if num_heads % parallel.tp_size or num_kv_heads % parallel.tp_size:
            raise ModelLoadError(
                f"tensor_parallel_size {parallel.tp_size} must divide the {num_heads} query heads "
                f"and {num_kv_heads} KV heads"
            )
        sizes = [num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim]
        super().__init__(hidden_size, sizes, bias=bias, dtype=dtype, parallel=parallel, method=method)

    def shard_ids(self) -> list[int | str]:
        return ["q", "k", "v"]

    def _slice_of(self, shard: int | str) -> tuple[int, int]:
        return super()._slice_of("qkv".index(str(shard)))


class RowParallelLinear(_ParallelLinear):
    """y = x W^T with W's input columns split across ranks; partial sums are all-reduced."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        bias: bool = False,
        dtype: torch.dtype,
        parallel: ParallelContext = SINGLE_DEVICE,
        method: LinearMethod | None = None,
    ) -> None:
        super().__init__(input_size // parallel.tp_size, output_size, bias, dtype, parallel, method)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.parallel.all_reduce(self.method.apply(self, x, None))
        return y + self.bias if self.bias is not None else y

    def load(self, param_name: str, loaded: torch.Tensor, shard: str | int | None, ckpt_name: str) -> None:
        """Load a full checkpoint tensor: weights split along the input dim, bias kept whole."""
        part = self._shard(loaded, 1) if param_name == "weight" else loaded
        copy_checked(getattr(self, param_name), part, ckpt_name)
