"""KV-cache memory: bytes per block, the memory-profiling forward pass that sizes the cache on a GPU (every
rank runs it with rank 0), and the per-layer K and V tensors themselves."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from forgellm.distributed.pipeline import PendingLogits
from forgellm.layers.attention import Attention
from forgellm.worker.forward import forward_logits
from forgellm.worker.forward_batch import SequenceChunk, build_forward_batch


def kv_block_bytes(model: nn.Module, block_size: int, dtype: torch.dtype) -> int:
    """Bytes of K and V for one block of tokens in `model`'s own attention layers (what `allocate_kv_cache`
    gives them): under tensor or pipeline parallelism this rank's share (its KV heads, its stage's layers), scaled
    to the largest stage when the layers do not split evenly (every rank holds the same number of blocks)."""
    per_token = sum(
        2 * layer.num_kv_heads * layer.head_dim for layer in model.modules() if isinstance(layer, Attention)
    )
    parallel = getattr(model, "parallel", None)
    if parallel is not None and parallel.pp_size > 1:
        num_layers = model.config.num_hidden_layers
        per_token = per_token * parallel.largest_stage(num_layers) // len(parallel.stage_layers(num_layers))
    return per_token * dtype.itemsize * block_size


@dataclass(frozen=True)
class ProfileForward:
    """Rank 0's request that every rank run the memory-profiling forward pass: `num_tokens` in one chunk."""

    num_tokens: int
    num_seqs: int


@torch.inference_mode()
def profile_forward(
    model: nn.Module, request: ProfileForward, block_size: int, kv_dtype: torch.dtype, device: torch.device
) -> int:
    """The largest step's forward pass over a scratch KV cache (dropped after); the peak GPU bytes it took (0 on
    a CPU), the largest over the ranks when there are several."""
    num_tokens = request.num_tokens
    blocks = -(-num_tokens // block_size)
    allocate_kv_cache(model, blocks, block_size, kv_dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    chunk = SequenceChunk([0] * num_tokens, 0, list(range(blocks)), [])
    batch = build_forward_batch([chunk], block_size, device)
    batch = replace(batch, logits_indices=torch.arange(min(request.num_seqs, num_tokens), device=device))
    logits = forward_logits(model, None, batch, device)  # under pipeline parallelism rank 0 gets them
    if isinstance(logits, PendingLogits):
        logits = logits.wait()
    peak = 0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    del logits, batch
    allocate_kv_cache(model, 0, block_size, kv_dtype)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        largest = torch.tensor([peak], dtype=torch.int64, device=device)
        torch.distributed.all_reduce(largest, op=torch.distributed.ReduceOp.MAX)
        peak = int(largest.item())
    return peak


def allocate_kv_cache(model: nn.Module, num_blocks: int, block_size: int, dtype: torch.dtype) -> None:
    """Give every attention layer of `model` its [num_blocks, block_size, kv_heads, head_dim] K and V caches."""
    device = next(model.parameters()).device
    for layer in model.modules():
        if isinstance(layer, Attention):  # this rank's KV heads (a share of them under tensor parallelism)
            shape = (num_blocks, block_size, layer.num_kv_heads, layer.head_dim)
            layer.k_cache = torch.empty(shape, dtype=dtype, device=device)
            layer.v_cache = torch.empty(shape, dtype=dtype, device=device)
