"""Tensor-parallel-aware linear layers that delegate weights, loading and the matmul to a LinearMethod.

Each layer knows which checkpoint projections it is made of (`part_names`: the q/k/v projections of a
fused qkv layer, gate/up of the fused MLP, or one) and asks its QuantizationConfig for the method that
runs it. With tp_size 1 (the ordinary case) every layer holds the whole weight.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from forgellm.distributed import SINGLE_DEVICE, ParallelContext
from forgellm.errors import ModelLoadError
from forgellm.layers.linear_method import UNQUANTIZED, LinearMethod, copy_checked

if TYPE_CHECKING:
    from forgellm.quantization.config import QuantizationConfig


class LinearBase(nn.Module):
    """A projection of `input_size` inputs to the concatenated outputs of its parts (this rank's share)."""

    # The dim of a full checkpoint weight that tensor parallelism splits: 0 = outputs, 1 = inputs.
    tp_dim = 0

    def __init__(
        self,
        input_size: int,
        output_sizes: list[int],
        part_names: list[str],
        *,
        bias: bool,
        dtype: torch.dtype,
        parallel: ParallelContext,
        quant_config: QuantizationConfig | None,
    ) -> None:
        super().__init__()
        self.parallel = parallel
        self.input_size = input_size
        self.output_sizes = output_sizes
        self.output_size = sum(output_sizes)
        self.part_names = part_names
        self.method: LinearMethod = quant_config.linear_method(self) if quant_config is not None else UNQUANTIZED
        self.method.create_weights(self, dtype)
        self.bias = nn.Parameter(torch.empty(self.output_size, dtype=dtype), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.apply(self, x, self.bias)

    def part_slice(self, part: int) -> tuple[int, int]:
        """(offset, size) of part number `part` in this layer's outputs."""
        return sum(self.output_sizes[:part]), self.output_sizes[part]

    def rank_slice(self, loaded: torch.Tensor, dim: int | None = None, part: int = 0) -> torch.Tensor:
        """This rank's slice of a full checkpoint tensor of part `part` along `dim` (default: the layer's
        split dim)."""
        dim = self.tp_dim if dim is None else dim
        size = loaded.shape[dim] // self.parallel.tp_size
        return loaded.narrow(dim, self.parallel.tp_rank * size, size)

    def load(self, param_name: str, loaded: torch.Tensor, shard: str | int | None, ckpt_name: str) -> None:
        """Load one checkpoint tensor of part `shard`: the bias here, everything else through the method."""
        part = int(shard or 0)
        if param_name == "bias":
            self._load_bias(loaded, part, ckpt_name)
        else:
            self.method.load(self, param_name, loaded, part, ckpt_name)

    def _load_bias(self, loaded: torch.Tensor, part: int, ckpt_name: str) -> None:
        assert self.bias is not None
        offset, size = self.part_slice(part)
        copy_checked(self.bias.narrow(0, offset, size), self.rank_slice(loaded, 0, part), ckpt_name)

    def finish_loading(self) -> None:
        """Let the method repack what it loaded (called once, after every tensor is in)."""
        self.method.finish_loading(self)

    def extra_repr(self) -> str:
        return f"in={self.input_size}, out={self.output_sizes}, method={self.method.describe()}"


class ColumnParallelLinear(LinearBase):
    """y = x W^T with W's output rows split across ranks (each rank yields a slice of y)."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        prefix: str,
        bias: bool = False,
        dtype: torch.dtype,
        parallel: ParallelContext = SINGLE_DEVICE,
        quant_config: QuantizationConfig | None = None,
    ) -> None:
        super().__init__(
            input_size,
            [output_size // parallel.tp_size],
            [prefix],
            bias=bias,
            dtype=dtype,
            parallel=parallel,
            quant_config=quant_config,
        )


class MergedColumnParallelLinear(LinearBase):
    """Several column-parallel projections of the same input fused into one matmul (e.g. gate|up)."""

    def __init__(
        self,
        input_size: int,
        output_sizes: list[int],
        *,
        prefixes: list[str],
        bias: bool = False,
        dtype: torch.dtype,
        parallel: ParallelContext = SINGLE_DEVICE,
        quant_config: QuantizationConfig | None = None,
    ) -> None:
        sizes = [size // parallel.tp_size for size in output_sizes]
        super().__init__(
            input_size, sizes, prefixes, bias=bias, dtype=dtype, parallel=parallel, quant_config=quant_config
        )


class QKVParallelLinear(LinearBase):
    """q, k and v projections fused into one matmul; parts 0, 1, 2 are q, k, v."""

    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        num_heads: int,
        num_kv_heads: int,
        *,
        prefixes: list[str],
        bias: bool = False,
        dtype: torch.dtype,
        parallel: ParallelContext = SINGLE_DEVICE,
        quant_config: QuantizationConfig | None = None,
    ) -> None:
        tp = parallel.tp_size
        if num_heads % tp or (num_kv_heads % tp if num_kv_heads >= tp else tp % num_kv_heads):
            raise ModelLoadError(
                f"tensor_parallel_size {tp} must divide the {num_heads} query heads, and divide or be a multiple "
                f"of the {num_kv_heads} KV heads"
            )
        # With fewer KV heads than ranks, each KV head is replicated on tp / num_kv_heads ranks.
        local_kv_heads, first_kv_head = parallel.kv_heads(num_kv_heads)
        kv_size = local_kv_heads * head_dim
        super().__init__(
            hidden_size,
            [num_heads // tp * head_dim, kv_size, kv_size],
            prefixes,
            bias=bias,
            dtype=dtype,
            parallel=parallel,
            quant_config=quant_config,
        )
        self.head_dim, self.local_kv_heads, self.first_kv_head = head_dim, local_kv_heads, first_kv_head

    def rank_slice(self, loaded: torch.Tensor, dim: int | None = None, part: int = 0) -> torch.Tensor:
        """q: this rank's heads; k and v: its KV heads (replicated ones included)."""
        dim = self.tp_dim if dim is None else dim
        if part == 0 or dim != 0:
            return super().rank_slice(loaded, dim, part)
        size = self.local_kv_heads * self.head_dim
        return loaded.narrow(0, self.first_kv_head * self.head_dim, size)


class RowParallelLinear(LinearBase):
    """y = x W^T with W's input columns split across ranks; partial sums are all-reduced."""

    tp_dim = 1

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        prefix: str,
        bias: bool = False,
        dtype: torch.dtype,
        parallel: ParallelContext = SINGLE_DEVICE,
        quant_config: QuantizationConfig | None = None,
    ) -> None:
        super().__init__(
            input_size // parallel.tp_size,
            [output_size],
            [prefix],
            bias=bias,
            dtype=dtype,
            parallel=parallel,
            quant_config=quant_config,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.parallel.all_reduce(self.method.apply(self, x, None))
        return y + self.bias if self.bias is not None else y

    def _load_bias(self, loaded: torch.Tensor, part: int, ckpt_name: str) -> None:
        assert self.bias is not None
        copy_checked(self.bias, loaded, ckpt_name)  # the bias is added once, after the all-reduce: kept whole
