"""Layer-by-layer calibration: the model's decoder layers run one at a time over the calibration samples.

Each layer runs twice. The first pass, with its float weights, feeds observers hooked on its linear layers
(a GPTQ Hessian, an amax for static scales, a row sample for AWQ) and reads the rotated K and V it writes
for FP8 KV-cache scales. The caller then quantizes the layer and writes the quantized ("fake") weights back;
the second pass makes the next layer's inputs from them, so later layers calibrate on what the quantized
model will feed them (as llmcompressor's sequential pipeline does). Peak memory is the model, the hidden
states of all samples (2 x samples x seq_len x hidden) and one layer's observers.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from forgellm.errors import CapacityError
from forgellm.layers.attention import Attention
from forgellm.layers.linear import LinearBase
from forgellm.quantization.quantize.gptq import HessianAccumulator
from forgellm.worker.forward_batch import ForwardBatch, SequenceChunk, build_forward_batch

BLOCK_SIZE = 16


@dataclass
class ObserverNeeds:
    """What the scheme must see of each linear's inputs."""

    hessian: bool = False
    amax: bool = False
    rows: int = 0  # rows of inputs to keep per linear (spread over all chunks); 0: none
    kv_amax: bool = False


class LinearObserver:
    """A forward pre-hook that accumulates what ObserverNeeds asks for from one linear's inputs."""

    def __init__(self, layer: LinearBase, needs: ObserverNeeds, rows_per_chunk: int) -> None:
        self.hessian = HessianAccumulator(layer.input_size, layer.weight.device) if needs.hessian else None
        self.amax = 0.0
        self.track_amax = needs.amax
        self.rows_per_chunk = rows_per_chunk
        self.rows: list[torch.Tensor] = []

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0].reshape(-1, args[0].shape[-1])
        if self.hessian is not None:
            self.hessian.add(x)
        if self.track_amax:
            self.amax = max(self.amax, float(x.abs().amax()))
        if self.rows_per_chunk:
            step = max(1, x.shape[0] // self.rows_per_chunk)
            self.rows.append(x[::step][: self.rows_per_chunk].float())

    def sampled_rows(self) -> torch.Tensor:
        """The kept input rows [R, K] in float32."""
        return torch.cat(self.rows)


@dataclass
class LayerObservations:
    """What one decoder layer's first pass saw."""

    linears: dict[str, LinearObserver]  # module path inside the layer ("self_attn.qkv_proj") -> observer
    k_amax: float = 0.0
    v_amax: float = 0.0


class Progress:
    """One line per layer on stderr: a bar, seconds per layer and the time left."""

    def __init__(self, total: int, label: str, stream=sys.stderr) -> None:
        self.total, self.label, self.stream = total, label, stream
        self.start = time.perf_counter()

    def update(self, done: int) -> None:
        elapsed = time.perf_counter() - self.start
        left = elapsed / done * (self.total - done)
        bar = "#" * (20 * done // self.total) + "-" * (20 - 20 * done // self.total)
        print(
            f"{self.label} [{bar}] layer {done}/{self.total}, {elapsed / done:.1f} s/layer, "
            f"elapsed {_clock(elapsed)}, ETA {_clock(left)}",
            file=self.stream,
            flush=True,
        )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(math.ceil(seconds)), 60)
    return f"{minutes}m{secs:02d}s"


@dataclass
class _Chunk:
    """Some samples batched into one forward through a layer, with their hidden state between layers."""

    batch: ForwardBatch
    rope: tuple[torch.Tensor, torch.Tensor]
    hidden: torch.Tensor
    residual: torch.Tensor | None = None


def _chunks(model: nn.Module, samples: list[list[int]], chunk_tokens: int, device: torch.device) -> list[_Chunk]:
    """Group samples into forwards of at most chunk_tokens tokens (one sample at least) and embed them."""
    per_chunk = max(1, chunk_tokens // max(len(s) for s in samples))
    chunks = []
    for start in range(0, len(samples), per_chunk):
        group, seqs, block = samples[start : start + per_chunk], [], 0
        for ids in group:
            blocks = list(range(block, block + -(-len(ids) // BLOCK_SIZE)))
            block += len(blocks)
            seqs.append(SequenceChunk(ids, 0, blocks, []))
        batch = build_forward_batch(seqs, BLOCK_SIZE, device)
        dynamic = model.config.rope.type == "dynamic"
        rope = model.rotary.cos_sin(batch.positions, batch.token_seq_lens if dynamic else None)
        chunks.append(_Chunk(batch, rope, model.embed_tokens(batch.input_ids)))
    return chunks


def _bind_kv_cache(attn: Attention, num_blocks: int, arch, dtype: torch.dtype, device: torch.device) -> None:
    shape = (num_blocks, BLOCK_SIZE, arch.num_key_value_heads, arch.head_dim)
    attn.k_cache = torch.zeros(shape, dtype=dtype, device=device)
    attn.v_cache = torch.zeros(shape, dtype=dtype, device=device)


@torch.inference_mode()
def calibrate_layers(
    model: nn.Module,
    samples: list[list[int]],
    needs: ObserverNeeds,
    quantize_layer: Callable[[int, nn.Module, LayerObservations], None],
    chunk_tokens: int = 8192,
    progress: Progress | None = None,
) -> None:
    """Run `model`'s decoder layers one by one over `samples`; after each layer's observed pass, call
    quantize_layer(index, layer, observations), which must leave the layer's weights as the quantized
    model computes with them."""
    chunks = _chunks(model, samples, chunk_tokens, next(model.parameters()).device)
    num_blocks = max(int(c.batch.block_tables.max()) + 1 for c in chunks)
    rows_per_chunk = -(-needs.rows // len(chunks)) if needs.rows else 0
    for index, layer in enumerate(model.layers):
        try:
            _calibrate_layer(index, layer, model.config, chunks, num_blocks, needs, rows_per_chunk, quantize_layer)
        except torch.OutOfMemoryError as exc:
            raise CapacityError(
                f"out of memory calibrating model.layers.{index} ({len(samples)} samples x "
                f"{max(len(s) for s in samples)} tokens); lower --num-samples or --seq-len"
            ) from exc
        if progress is not None:
            progress.update(index + 1)


def _calibrate_layer(
    index: int,
    layer: nn.Module,
    arch,
    chunks: list[_Chunk],
    num_blocks: int,
    needs: ObserverNeeds,
    rows_per_chunk: int,
    quantize_layer: Callable[[int, nn.Module, LayerObservations], None],
) -> None:
    """The observed pass, quantize_layer, then the pass that makes the next layer's inputs."""
    attn = next(m for m in layer.modules() if isinstance(m, Attention))
    _bind_kv_cache(attn, num_blocks, arch, chunks[0].hidden.dtype, chunks[0].hidden.device)
    observers = {
        name: LinearObserver(module, needs, rows_per_chunk)
        for name, module in layer.named_modules()
        if isinstance(module, LinearBase)
    }
    handles = [m.register_forward_pre_hook(observers[n]) for n, m in layer.named_modules() if n in observers]
    seen = LayerObservations(observers)
    try:
        for chunk in chunks:
            layer(chunk.rope, chunk.hidden, chunk.residual, chunk.batch)
            if needs.kv_amax:  # the rotated K and V of the chunk's tokens, as the cache holds them
                slots = chunk.batch.slot_mapping
                seen.k_amax = max(seen.k_amax, float(attn.k_cache.flatten(0, 1)[slots].abs().amax()))
                seen.v_amax = max(seen.v_amax, float(attn.v_cache.flatten(0, 1)[slots].abs().amax()))
    finally:
        for handle in handles:
            handle.remove()
    quantize_layer(index, layer, seen)
    del seen, observers
    for chunk in chunks:
        chunk.hidden, chunk.residual = layer(chunk.rope, chunk.hidden, chunk.residual, chunk.batch)
    attn.k_cache = attn.v_cache = None
