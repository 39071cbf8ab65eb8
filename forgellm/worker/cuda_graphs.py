"""Decode steps and short single-request prefills as CUDA-graph replays.

A step launches hundreds of small kernels; replaying a captured graph removes their launch cost.
Graphs are captured once at start-up (largest first, all in one memory pool) over static input
buffers, keyed by (kind, size):

- ("decode", B): B requests computing one token each, for B on a ladder 1, 2, 4, 8, 16, 24, ...;
  a step is padded to the next size with rows of seq_len 0 and slot -1 (attention and the KV
  write skip them).
- ("verify", B): B requests computing q tokens each (speculative decoding: the last token and
  q - 1 drafts, logits at every one), on the decode ladder; padding requests have seq_len 0, so
  their queries sit at negative positions and attend to nothing.
- ("prefill", T): one request computing 2..T tokens (a prompt chunk, or a verify step's last token and
  drafts), for T in 16, 32, ..., 512; the padding tokens lie past the request's query range (the
  attention kernel skips them) and have slot -1. Their rows of the hidden states are garbage, which
  stays in those rows: no op mixes rows.

Logits are computed outside the graph, on the rows that need them.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import logging
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from forgellm.worker.forward_batch import ForwardBatch

logger = logging.getLogger(__name__)

MAX_PREFILL_GRAPH_TOKENS = 512  # longer prefills are GPU-bound: launch overhead no longer shows


def capture_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, 16, 24, 32, ... up to max_num_seqs (always included)."""
    sizes = [s for s in (1, 2, 4, 8) if s < max_num_seqs]
    sizes += list(range(16, max_num_seqs, 8))
    return sorted(set(sizes + [max_num_seqs]))


def prefill_capture_sizes(max_tokens: int) -> list[int]:
    """16, 32, 64, ... up to min(max_tokens, MAX_PREFILL_GRAPH_TOKENS); empty below 16."""
    limit = min(max_tokens, MAX_PREFILL_GRAPH_TOKENS)
    sizes, size = [], 16
    while size <= limit:
        sizes.append(size)
        size *= 2
    return sizes


@contextlib.contextmanager
def capturing(graph: torch.cuda.CUDAGraph, pool: object | None = None, **options: Any) -> Iterator[None]:
    """torch.cuda.graph with Python's garbage collector off. torch no longer collects before a capture, so a
    finished engine's CUDA graphs may wait in dead reference cycles; a collection during the capture would
    destroy them, and destroying a graph while a stream captures invalidates the capture. Callers collect
    once before capturing (`gc.collect()`), outside any capture."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        with torch.cuda.graph(graph, pool=pool, **options):
            yield
    finally:
        if enabled:
            gc.enable()


class CudaGraphRunner:
    """Captures the model's forward pass for decode batches and short prefills, and replays them."""

    def __init__(
        self,
        model: nn.Module,
        max_num_seqs: int,
        max_blocks_per_seq: int,
        max_seq_len: int,
        device: torch.device,
        max_prefill_tokens: int = 0,
        verify_len: int = 0,
    ) -> None:
        self.model = model
        self.sizes = capture_sizes(max_num_seqs)
        self.prefill_sizes = prefill_capture_sizes(max_prefill_tokens)
        # Tokens per request of the uniform batches: 1 for decode, verify_len for verify graphs (none if < 2).
        self.query_lens = {"decode": 1} | ({"verify": verify_len} if verify_len > 1 else {})
        self.max_seq_len = max_seq_len
        n = self.sizes[-1]
        num_tokens = max([n * max(self.query_lens.values()), *self.prefill_sizes])
        self.input_ids = torch.zeros(num_tokens, dtype=torch.int64, device=device)
        self.positions = torch.zeros(num_tokens, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((num_tokens,), -1, dtype=torch.int64, device=device)
        self.seq_lens = torch.zeros(n, dtype=torch.int32, device=device)
        # Uniform batches: request i's queries start at i * q.
        self.uniform_query_start_loc = {
            kind: torch.arange(0, (n + 1) * q, q, dtype=torch.int32, device=device)
            for kind, q in self.query_lens.items()
        }
        self.prefill_query_start_loc = torch.zeros(2, dtype=torch.int32, device=device)  # [0, T]
        self.block_tables = torch.zeros(n, max_blocks_per_seq, dtype=torch.int32, device=device)
        self.logits_indices = torch.arange(num_tokens, dtype=torch.int64, device=device)
        # Rows of a prefill graph's hidden states that need logits (the last one, or every verified position).
        self.prefill_logits_rows = torch.zeros(num_tokens, dtype=torch.int64, device=device)
        self.graphs: dict[tuple[str, int], torch.cuda.CUDAGraph] = {}
        self.hidden: dict[tuple[str, int], torch.Tensor] = {}
        self.pool: object | None = None  # the graphs' shared memory pool, once captured

    def _batch(self, kind: str, size: int) -> ForwardBatch:
        if kind == "prefill":
            num_seqs, num_tokens, query_len, query_start_loc = 1, size, size, self.prefill_query_start_loc
        else:
            num_seqs, query_len = size, self.query_lens[kind]
            num_tokens, query_start_loc = size * query_len, self.uniform_query_start_loc[kind][: size + 1]
        return ForwardBatch(
            input_ids=self.input_ids[:num_tokens],
            positions=self.positions[:num_tokens],
            query_start_loc=query_start_loc,
            seq_lens=self.seq_lens[:num_seqs],
            max_query_len=query_len,
            max_seq_len=self.max_seq_len,
            block_tables=self.block_tables[:num_seqs],
            slot_mapping=self.slot_mapping[:num_tokens],
            logits_indices=self.logits_indices[:num_seqs],
            num_prefills=0 if query_len == 1 else num_seqs,
            num_decodes=num_seqs if query_len == 1 else 0,
        )

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture one graph per shape, largest first so smaller ones reuse its pool."""
        start = time.perf_counter()
        gc.collect()  # dead engines' graphs go now, not during a capture (see `capturing`)
        pool = self.pool = torch.cuda.graph_pool_handle()
        keys = [(kind, s) for kind in self.query_lens for s in self.sizes]
        keys += [("prefill", s) for s in self.prefill_sizes]
        for key in sorted(keys, key=lambda k: -self._batch(*k).num_tokens):
            warmup = self._batch(*key)
            self.model(warmup.input_ids, warmup.positions, warmup)  # autotuning, lazy init
            torch.cuda.synchronize()
            batch = self._batch(*key)  # a fresh batch: nothing computed outside the capture is reused
            graph = torch.cuda.CUDAGraph()
            with capturing(graph, pool):
                self.hidden[key] = self.model(batch.input_ids, batch.positions, batch)
            self.graphs[key] = graph
        torch.cuda.synchronize()
        logger.info(
            "captured %d CUDA graphs (%s batch %s, prefill tokens %s) in %.1f s",
            len(keys),
            " and ".join(self.query_lens),
            self.sizes,
            self.prefill_sizes,
            time.perf_counter() - start,
        )

    def key_for(self, host: ForwardBatch) -> tuple[str, int] | None:
        """The graph that can run this step, or None: decode batches that fit the largest graph and
        need logits for every request; single-request prefills that fit and need logits somewhere."""
        if host.block_tables.shape[1] > self.block_tables.shape[1]:
            return None
        if host.positions.dim() != 1 or host.mm_embeds is not None:  # images' tokens run eagerly
            return None
        n, num_tokens = host.num_requests, host.num_tokens
        for kind, query_len in self.query_lens.items():
            # Uniform: every request computes query_len tokens, each with logits (decode: one per request).
            uniform = host.max_query_len == query_len and num_tokens == n * query_len
            if uniform and n <= self.sizes[-1] and host.logits_indices.shape[0] == num_tokens:
                return kind, self.sizes[bisect.bisect_left(self.sizes, n)]
        if host.max_query_len == 1:
            return None
        if n == 1 and self.prefill_sizes and num_tokens <= self.prefill_sizes[-1] and host.logits_indices.numel():
            return "prefill", self.prefill_sizes[bisect.bisect_left(self.prefill_sizes, num_tokens)]
        return None

    def load(self, host: ForwardBatch, key: tuple[str, int]) -> None:
        """Copy the host batch into the static buffers of the graph `key`."""
        kind, size = key
        n, num_tokens = host.num_requests, host.num_tokens
        self.input_ids[:num_tokens].copy_(host.input_ids, non_blocking=True)
        self.positions[:num_tokens].copy_(host.positions, non_blocking=True)
        self.slot_mapping[:num_tokens].copy_(host.slot_mapping, non_blocking=True)
        self.seq_lens[:n].copy_(host.seq_lens, non_blocking=True)
        self.block_tables[:n, : host.block_tables.shape[1]].copy_(host.block_tables, non_blocking=True)
        if kind == "prefill":
            self.prefill_query_start_loc.copy_(host.query_start_loc, non_blocking=True)
            rows = host.logits_indices.shape[0]
            self.prefill_logits_rows[:rows].copy_(host.logits_indices, non_blocking=True)
        padded_tokens = size if kind == "prefill" else size * self.query_lens[kind]
        if padded_tokens > num_tokens:  # padding: attend to nothing, write nothing
            self.slot_mapping[num_tokens:padded_tokens].fill_(-1)
            if kind != "prefill":
                self.seq_lens[n:size].fill_(0)

    def replay(self, key: tuple[str, int], host: ForwardBatch) -> torch.Tensor:
        """Replay the graph `key` over the loaded buffers; return the hidden states of the logits rows."""
        self.graphs[key].replay()
        if key[0] != "prefill":
            return self.hidden[key][: host.num_tokens]
        return self.hidden[key].index_select(0, self.prefill_logits_rows[: host.logits_indices.shape[0]])
