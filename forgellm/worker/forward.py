"""One forward pass over a host batch: a CUDA-graph replay when a captured graph fits it, else eager.

The model runner and the draft model of speculative decoding both run steps this way; the token ids
some positions need may still be on the device (sampled by the step before), so they are copied in
after the host batch is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from forgellm.distributed.pipeline import PendingLogits, pipeline_logits
from forgellm.worker.cuda_graphs import CudaGraphRunner
from forgellm.worker.forward_batch import ForwardBatch

if TYPE_CHECKING:
    from forgellm.distributed.executor import TensorParallelExecutor


def forward_logits(
    model: nn.Module,
    graph_runner: CudaGraphRunner | None,
    host: ForwardBatch,
    device: torch.device,
    destinations: torch.Tensor | None = None,
    token_ids: torch.Tensor | None = None,
) -> torch.Tensor | PendingLogits | None:
    """[N, V] logits at the batch's logits rows; the input ids at `destinations` become `token_ids` first. Under
    pipeline parallelism only global rank 0 gets them, pending while the later stages run (the other ranks None)."""
    key = None if graph_runner is None else graph_runner.key_for(host)
    if key is not None:
        graph_runner.load(host, key)
        if token_ids is not None:
            graph_runner.input_ids.index_copy_(0, destinations, token_ids)
        return model.compute_logits(graph_runner.replay(key, host))
    batch = host.to(device)
    if token_ids is not None:
        batch.input_ids.index_copy_(0, destinations, token_ids)
    parallel = getattr(model, "parallel", None)
    if parallel is not None and parallel.pp_size > 1:  # this rank's stage; the logits reach rank 0 only
        return pipeline_logits(model, batch, parallel)
    hidden = model(batch.input_ids, batch.positions, batch)
    return model.compute_logits(hidden[batch.logits_indices])


@dataclass
class StepMessage:
    """Rank 0's message for one step's forward pass. What is on rank 0's device follows it by broadcasts, device to
    device (never through the host): the input ids the step in flight sampled (asynchronous scheduling), to go at
    `destinations`, and a vision-language model's image rows (shape and dtype in `image_rows`)."""

    batch: ForwardBatch  # without its image rows
    destinations: list[int] | None = None
    image_rows: tuple[tuple[int, ...], torch.dtype] | None = None


def send_step(
    executor: TensorParallelExecutor, host: ForwardBatch, destinations: list[int] | None, token_ids: Any
) -> None:
    """Rank 0: post a step to the other ranks, then broadcast its device tensors (`token_ids`: the ids going to
    `destinations`; both None without tokens in flight)."""
    rows = host.mm_embeds
    if rows is None:
        executor.post(StepMessage(host, destinations))
    else:
        executor.post(StepMessage(replace(host, mm_embeds=None), destinations, (tuple(rows.shape), rows.dtype)))
    if token_ids is not None:
        torch.distributed.broadcast(token_ids, src=0)
    if rows is not None:
        torch.distributed.broadcast(rows.contiguous(), src=0)


def worker_forward(model: nn.Module, message: StepMessage, device: torch.device) -> None:
    """A rank > 0's part of a step's forward pass, taking what rank 0 broadcasts after the message (rank 0 samples:
    nothing to return)."""
    batch, destinations, token_ids = message.batch, None, None
    if message.destinations is not None:
        token_ids = torch.empty(len(message.destinations), dtype=torch.int64, device=device)
        torch.distributed.broadcast(token_ids, src=0)
        destinations = torch.tensor(message.destinations, dtype=torch.int64, device=device)
    if message.image_rows is not None:
        shape, dtype = message.image_rows
        rows = torch.empty(shape, dtype=dtype, device=device)
        torch.distributed.broadcast(rows, src=0)
        batch = replace(batch, mm_embeds=rows)
    forward_logits(model, None, batch, device, destinations, token_ids)
