"""One forward pass over a host batch: a CUDA-graph replay when a captured graph fits it, else eager.

The model runner and the draft model of speculative decoding both run steps this way; the token ids
some positions need may still be on the device (sampled by the step before), so they are copied in
after the host batch is loaded.
"""

from __future__ import annotations

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
