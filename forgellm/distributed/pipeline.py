"""Pipeline parallelism's hand-offs: each stage passes its residual stream to the next stage's rank of equal
tp_rank, and the last stage's logits go to global rank 0, the engine, which samples.

Rank 0 does not wait for a batch to leave the pipeline: it sends its stage's output and posts the receive of
the logits, so that it can start its stage of the next batch (another set of requests) while the later stages
work on this one (engine/pipelined_core.py keeps one batch in flight per stage). The other ranks take their
batches in order and hand them on as they come.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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


@dataclass
class PendingLogits:
    """Rank 0's logits of a batch still in the later stages: the receive is posted, `wait` returns them."""

    logits: torch.Tensor  # [N, vocab], filled once the receive completes
    sends: list[Any] = field(default_factory=list)  # rank 0's stage output on its way (kept alive until done)
    receive: Any = None

    def wait(self) -> torch.Tensor:
        """The logits, once the last stage has sent them; a RuntimeError when that takes longer than the process
        group's timeout (distributed_timeout_s)."""
        for work in self.sends:
            work.wait()
        self.receive.wait()
        self.sends, self.receive = [], None
        return self.logits


def pipeline_logits(
    model: nn.Module, batch: ForwardBatch, parallel: ParallelContext
) -> torch.Tensor | PendingLogits | None:
    """Run this rank's stage of one forward pass over `batch` (on the device): on global rank 0 the logits rows
    [N, vocab] (pending while later stages run), None on the other ranks."""
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
        next_stage = parallel.rank + parallel.tp_size
        if parallel.rank != 0:
            for part in (out.hidden, out.residual):
                dist.send(part.contiguous(), dst=next_stage)
            return None
        # Rank 0 returns at once: the sends complete once the next stage is done with the batches before.
        rows = batch.logits_indices.shape[0]
        pending = PendingLogits(torch.empty(rows, model.config.vocab_size, device=out.hidden.device))
        pending.sends = [dist.isend(part.contiguous(), dst=next_stage) for part in (out.hidden, out.residual)]
        pending.receive = dist.irecv(pending.logits, src=(parallel.pp_size - 1) * parallel.tp_size)
        return pending
    logits = model.compute_logits(out[batch.logits_indices])  # every rank of the stage: the all-gather pairs up
    if parallel.tp_rank == 0 and parallel.rank != 0:
        dist.send(logits.contiguous(), dst=0)
    return logits if parallel.rank == 0 else None
