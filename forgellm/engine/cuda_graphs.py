"""Decode steps as CUDA-graph replays over a ladder of batch sizes.

A decode step launches hundreds of small kernels; replaying a captured graph removes their launch
cost. Graphs are captured once at start-up (largest first, all in one memory pool) over static
input buffers; a step with B requests is padded to the next captured size: padding rows have
seq_len 0 and slot -1, so attention and the KV write skip them. Logits are computed outside the
graph, on the real rows only.
"""

from __future__ import annotations

import bisect
import logging
import time

import torch
from torch import nn

from forgellm.engine.forward_batch import ForwardBatch

logger = logging.getLogger(__name__)


def capture_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, 16, 24, 32, ... up to max_num_seqs (always included)."""
    sizes = [s for s in (1, 2, 4, 8) if s < max_num_seqs]
    sizes += list(range(16, max_num_seqs, 8))
    return sorted(set(sizes + [max_num_seqs]))


class CudaGraphRunner:
    """Captures the model's decode forward pass per batch size and replays it."""

    def __init__(
        self, model: nn.Module, max_num_seqs: int, max_blocks_per_seq: int, max_seq_len: int, device: torch.device
    ) -> None:
        self.model = model
        self.sizes = capture_sizes(max_num_seqs)
        self.max_seq_len = max_seq_len
        n = self.sizes[-1]
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.int64, device=device)
        self.seq_lens = torch.zeros(n, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)  # one token per request
        self.block_tables = torch.zeros(n, max_blocks_per_seq, dtype=torch.int32, device=device)
        self.logits_indices = torch.arange(n, dtype=torch.int64, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.hidden: dict[int, torch.Tensor] = {}

    def _batch(self, size: int) -> ForwardBatch:
        return ForwardBatch(
            input_ids=self.input_ids[:size],
            positions=self.positions[:size],
            query_start_loc=self.query_start_loc[: size + 1],
            seq_lens=self.seq_lens[:size],
            max_query_len=1,
            max_seq_len=self.max_seq_len,
            block_tables=self.block_tables[:size],
            slot_mapping=self.slot_mapping[:size],
            logits_indices=self.logits_indices[:size],
            num_prefills=0,
            num_decodes=size,
        )

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture one graph per batch size, largest first so smaller ones reuse its pool."""
        start = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        for size in reversed(self.sizes):
            warmup = self._batch(size)
            self.model(warmup.input_ids, warmup.positions, warmup)  # autotuning, lazy init
            torch.cuda.synchronize()
            batch = self._batch(size)  # a fresh batch: nothing computed outside the capture is reused
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.hidden[size] = self.model(batch.input_ids, batch.positions, batch)
            self.graphs[size] = graph
        torch.cuda.synchronize()
        logger.info(
            "captured %d decode CUDA graphs (batch %s) in %.1f s",
            len(self.sizes),
            self.sizes,
            time.perf_counter() - start,
        )

    def can_run(self, host: ForwardBatch) -> bool:
        """Decode-only steps that fit the largest graph and need logits for every request."""
        return (
            host.max_query_len == 1
            and host.num_requests <= self.sizes[-1]
            and host.block_tables.shape[1] <= self.block_tables.shape[1]
            and host.logits_indices.shape[0] == host.num_requests
        )

    def load(self, host: ForwardBatch) -> int:
        """Copy the host batch into the static buffers; return the captured size that will replay it."""
        n = host.num_requests
        size = self.sizes[bisect.bisect_left(self.sizes, n)]
        self.input_ids[:n].copy_(host.input_ids, non_blocking=True)
        self.positions[:n].copy_(host.positions, non_blocking=True)
        self.slot_mapping[:n].copy_(host.slot_mapping, non_blocking=True)
        self.seq_lens[:n].copy_(host.seq_lens, non_blocking=True)
        self.block_tables[:n, : host.block_tables.shape[1]].copy_(host.block_tables, non_blocking=True)
        if size > n:  # padding rows: attend to nothing, write nothing
            self.slot_mapping[n:size].fill_(-1)
            self.seq_lens[n:size].fill_(0)
        return size

    def replay(self, size: int, num_requests: int) -> torch.Tensor:
        """Replay the graph of `size` over the loaded buffers; return the real rows' hidden states."""
        self.graphs[size].replay()
        return self.hidden[size][:num_requests]

    def run(self, host: ForwardBatch) -> torch.Tensor:
        """Load the host batch, replay, and return the real rows' hidden states."""
        return self.replay(self.load(host), host.num_requests)
