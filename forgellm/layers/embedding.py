"""Token embedding and the LM head, vocabulary-parallel across tensor-parallel ranks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from forgellm.distributed import SINGLE_DEVICE, ParallelContext
from forgellm.layers.linear import copy_checked


class VocabParallelEmbedding(nn.Module):
    """Embedding table whose rows (vocabulary) are split across ranks; lookups are all-reduced."""

    def __init__(
        self, vocab_size: int, hidden_size: int, *, dtype: torch.dtype, parallel: ParallelContext = SINGLE_DEVICE
    ) -> None:
        super().__init__()
        self.parallel = parallel
        self.vocab_size = vocab_size
        self.rows = (vocab_size + parallel.tp_size - 1) // parallel.tp_size
        self.start = parallel.tp_rank * self.rows
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


class ParallelLMHead(VocabParallelEmbedding):
    """The LM head of untied models: its own [vocab, hidden] table (tied models reuse the embedding)."""
