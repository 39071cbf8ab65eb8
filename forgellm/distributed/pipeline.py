"""Pipeline parallelism's hand-offs: each stage passes its residual stream to the next stage's rank of equal
tp_rank, and the last stage's logits go to global rank 0, the engine, which samples.

Stages run one after another on every step (no micro-batches in flight): the split is for models that do
not fit one device's memory, and it keeps the engine's step loop as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from torch import nn

    from forgellm.distributed.parallel_state import ParallelContext
    from forgellm.worker.forward_batch import ForwardBatch


@dataclass
class StageActivations:
    """The residual stream leaving a pipeline stage: the last layer's output and the residual, [T, hidden] each."""

    hidden: torch.Tensor
    residual: torch.Tensor


def pipeline_logits(model: nn.Module, batch: ForwardBatch, parallel: ParallelContext) -> torch.Tensor | None:
    """Run this rank's stage of one forward pass over `batch` (on the device); the logits rows [N, vocab] on
    global rank 0, None on the other ranks."""
    stage_input = None
    if not parallel.is_first_stage:
        num_tokens, hidden_size = batch.input_ids.shape[0], model.config.hidden_size
        source = parallel.rank - parallel.tp_size
        parts = [torch.empty(num_tokens, hidden_size, dtype=model.dtype, device=batch.input_ids.device) for _ in "hr"]
        for part in parts:
            dist.recv(part, src=source)
        stage_input = StageActivations(*parts)
    out = model(batch.input_ids, batch.positions, batch, stage_input=stage_input)
    if not parallel.is_last_stage:
        for part in (out.hidden, out.residual):
            dist.send(part.contiguous(), dst=parallel.rank + parallel.tp_size)
        if parallel.rank != 0:
            return None
        logits = torch.empty(batch.logits_indices.shape[0], model.config.vocab_size, device=out.hidden.device)
        dist.recv(logits, src=(parallel.pp_size - 1) * parallel.tp_size)  # the last stage's first rank
        return logits
    logits = model.compute_logits(out[batch.logits_indices])  # every rank of the stage: the all-gather pairs up
    if parallel.tp_rank == 0 and parallel.rank != 0:
        dist.send(logits.contiguous(), dst=0)
    return logits if parallel.rank == 0 else None
