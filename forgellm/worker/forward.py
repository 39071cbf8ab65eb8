"""One forward pass over a host batch: a CUDA-graph replay when a captured graph fits it, else eager.

The model runner and the draft model of speculative decoding both run steps this way; the token ids
some positions need may still be on the device (sampled by the step before), so they are copied in
after the host batch is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from forgellm.distributed.pipeline import PendingLogits, pipeline_logits
from forgellm.worker.cuda_graphs import CudaGraphRunner
from forgellm.worker.forward_batch import ForwardBatch


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
class PlaceholderStep:
    """Rank 0's message for a step whose input ids at `destinations` were sampled by the step in flight (on rank
    0's device): the other ranks take those ids from a broadcast right after (asynchronous scheduling)."""

    batch: ForwardBatch
    destinations: list[int]


def worker_forward(model: nn.Module, message: ForwardBatch | PlaceholderStep, device: torch.device) -> None:
    """A rank > 0's part of a step's forward pass (rank 0 samples: nothing to return)."""
    if isinstance(message, PlaceholderStep):
        token_ids = torch.empty(len(message.destinations), dtype=torch.int64, device=device)
        torch.distributed.broadcast(token_ids, src=0)
        destinations = torch.tensor(message.destinations, dtype=torch.int64, device=device)
        forward_logits(model, None, message.batch, device, destinations, token_ids)
    else:
        forward_logits(model, None, message, device)
