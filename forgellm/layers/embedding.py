"""Token embedding and the LM head, vocabulary-parallel across tensor-parallel ranks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from forgellm.distributed import SINGLE_DEVICE, ParallelContext
from forgellm.layers.linear import LinearBase
from forgellm.layers.linear_method import copy_checked

if TYPE_CHECKING:
    from forgellm.quantization.config import QuantizationConfig


def _vocab_rows(vocab_size: int, parallel: ParallelContext) -> tuple[int, int]:
    """(rows per rank, this rank's first row): the last rank's slice may be padded."""
    rows = (vocab_size + parallel.tp_size - 1) // parallel.tp_size
    return rows, parallel.tp_rank * rows


def _pad_rows(part: torch.Tensor, rows: int) -> torch.Tensor:
    return part if part.shape[0] == rows else F.pad(part, (0, 0, 0, rows - part.shape[0]))


class VocabParallelEmbedding(nn.Module):
    """Embedding table whose rows (vocabulary) are split across ranks; lookups are all-reduced.

    Lookups gather rows, so the table stays dense; tied models also use it as their LM head.
    """

    def __init__(
        self, vocab_size: int, hidden_size: int, *, dtype: torch.dtype, parallel: ParallelContext = SINGLE_DEVICE
    ) -> None:
        super().__init__()
        self.parallel = parallel
        self.vocab_size = vocab_size
        self.rows, self.start = _vocab_rows(vocab_size, parallel)
        self.weight = nn.Parameter(torch.empty(self.rows, hidden_size, dtype=dtype), requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.parallel.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.start
        outside = (local < 0) | (local >= self.rows)
        out = F.embedding(local.masked_fill(outside, 0), self.weight).masked_fill(outside[:, None], 0)
        return self.parallel.all_reduce(out)

    def load(self, param_name: str, loaded: torch.Tensor, shard: str | int | None, ckpt_name: str) -> None:
        """Copy this rank's rows of the full table (the last rank's slice may be padded)."""
        part = loaded[self.start : self.start + self.rows]
        target = self.weight[: part.shape[0]] if self.parallel.tp_size > 1 else self.weight
        copy_checked(target, part, ckpt_name)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits [N, vocab] of the given hidden states."""
        logits = F.linear(hidden, self.weight).float()
        return self.parallel.all_gather_last_dim(logits)[:, : self.vocab_size]


class ParallelLMHead(LinearBase):
    """The LM head of untied models: a [vocab, hidden] projection run by its LinearMethod (so a
    quantization config may quantize it), split by vocabulary rows across ranks."""

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        *,
        prefix: str = "lm_head",
        dtype: torch.dtype,
        parallel: ParallelContext = SINGLE_DEVICE,
        quant_config: QuantizationConfig | None = None,
    ) -> None:
        self.vocab_size = vocab_size
        rows, self.start = _vocab_rows(vocab_size, parallel)
        super().__init__(
            hidden_size, [rows], [prefix], bias=False, dtype=dtype, parallel=parallel, quant_config=quant_config
        )

    def rank_slice(self, loaded: torch.Tensor, dim: int | None = None, part: int = 0) -> torch.Tensor:
        """This rank's vocabulary rows, the last rank's padded to the common size."""
        rows = self.output_size
        return _pad_rows(loaded[self.start : self.start + rows], rows) if self.parallel.tp_size > 1 else loaded

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits [N, vocab] of the given hidden states."""
        logits = self.method.apply(self, hidden, None).float()
        return self.parallel.all_gather_last_dim(logits)[:, : self.vocab_size]
