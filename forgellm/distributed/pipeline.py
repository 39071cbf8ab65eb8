"""Pipeline parallelism's hand-offs: each stage passes its residual stream to the next stage's rank of equal
tp_rank, and the last stage's logits go to global rank 0, the engine, which samples.

Rank 0 does not wait for a batch to leave the pipeline: it sends its stage's output and posts the receive of
the logits, so that it can start its stage of the next batch (another set of requests) while the later stages
work on this one (engine/pipelined_core.py keeps one batch in flight per stage). The other ranks take their
batches in order and hand them on as they come.

An EAGLE-3 head on rank 0 reads the residual stream entering a few target layers (the model's `aux_hidden`):
each later stage sends rank 0 the columns of the layers it runs, with the logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
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
    # The later stages' captured hidden-state columns: (receive, buffer [T, slots * H], slots), copied into
    # `aux_hidden` once they arrive.
    aux_receives: list[tuple[Any, torch.Tensor, list[int]]] = field(default_factory=list)
    aux_hidden: torch.Tensor | None = None

    def wait(self) -> torch.Tensor:
        """The logits, once the last stage has sent them; a RuntimeError when that takes longer than the process
        group's timeout (distributed_timeout_s)."""
        for work in self.sends:
            work.wait()
        for work, buffer, slots in self.aux_receives:
            work.wait()
            _put_slots(self.aux_hidden, buffer, slots)
        self.receive.wait()
        self.sends, self.receive, self.aux_receives = [], None, []
        return self.logits


def aux_slots(model: nn.Module, layers: range) -> list[int]:
    """The slots of the model's captured hidden states (`aux_hidden`, one H-wide slot per captured layer) that
    the decoder layers `layers` fill."""
    return [slot for slot, layer in enumerate(getattr(model, "aux_hidden_layers", ())) if layer in layers]


def _take_slots(aux_hidden: torch.Tensor, num_tokens: int, slots: list[int], width: int) -> torch.Tensor:
    """Rows :num_tokens of the slots' columns, side by side [T, len(slots) * width]."""
    return torch.cat([aux_hidden[:num_tokens, s * width : (s + 1) * width] for s in slots], dim=1)


def _put_slots(aux_hidden: torch.Tensor, buffer: torch.Tensor, slots: list[int]) -> None:
    """The inverse of _take_slots: copy buffer's columns into their slots of aux_hidden."""
    width = buffer.shape[1] // len(slots)
    for i, s in enumerate(slots):
        aux_hidden[: buffer.shape[0], s * width : (s + 1) * width].copy_(buffer[:, i * width : (i + 1) * width])


def pipeline_logits(
    model: nn.Module, batch: ForwardBatch, parallel: ParallelContext
) -> torch.Tensor | PendingLogits | None:
    """Run this rank's stage of one forward pass over `batch` (on the device): on global rank 0 the logits rows
    [N, vocab] (pending while later stages run), None on the other ranks."""
    stage_input, num_tokens = None, batch.input_ids.shape[0]
    if not parallel.is_first_stage:
        source = parallel.rank - parallel.tp_size
        shape = (num_tokens, model.config.hidden_size)
        parts = [torch.empty(shape, dtype=model.dtype, device=batch.input_ids.device) for _ in "hr"]
        for part in parts:
            dist.recv(part, src=source)
        stage_input = StageActivations(*parts)
    out = model(batch.input_ids, batch.positions, batch, stage_input=stage_input)
    num_layers, width = model.config.num_hidden_layers, model.config.hidden_size
    if parallel.tp_rank == 0 and not parallel.is_first_stage:  # this stage's captured columns, before the logits
        slots = aux_slots(model, parallel.stage_layers(num_layers))
        if slots:
            dist.send(_take_slots(model.aux_hidden, num_tokens, slots, width), dst=0)
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
        for pp_rank in range(1, parallel.pp_size):
            slots = aux_slots(model, replace(parallel, pp_rank=pp_rank).stage_layers(num_layers))
            if slots:
                buffer = model.aux_hidden.new_empty(num_tokens, len(slots) * width)
                pending.aux_receives.append((dist.irecv(buffer, src=pp_rank * parallel.tp_size), buffer, slots))
        pending.aux_hidden = model.aux_hidden
        pending.receive = dist.irecv(pending.logits, src=(parallel.pp_size - 1) * parallel.tp_size)
        return pending
    logits = model.compute_logits(out[batch.logits_indices])  # every rank of the stage: the all-gather pairs up
    if parallel.tp_rank == 0 and parallel.rank != 0:
        dist.send(logits.contiguous(), dst=0)
    return logits if parallel.rank == 0 else None
