"""EAGLE-3's guesses 2..k of a step as one forward loop, one CUDA graph per batch size.

Guess j + 1 of a request feeds guess j at the next position, so after the catch-up every further guess
is a decode step whose inputs follow from the first: position T - 2 + s, KV length T - 1 + s, the slot
of that position in the request's blocks. Computing them on the device lets one graph run all k - 1
steps (the host loads one batch, not k - 1, and launches one replay). Each row stops writing K/V after
its own number of steps (a request near its context end, or short of held slots, guesses less): later
steps recompute its last position without writing anything, and their guesses are dropped.
"""

from __future__ import annotations

import bisect
import gc
import logging
import time

import torch

from forgellm.models.eagle3 import Eagle3Head
from forgellm.worker.cuda_graphs import capture_sizes, capturing
from forgellm.worker.forward_batch import ForwardBatch

logger = logging.getLogger(__name__)


class Eagle3Guesses:
    """Runs `num_steps` guess forwards for up to `max_num_seqs` requests over static device buffers."""

    def __init__(
        self,
        head: Eagle3Head,
        num_steps: int,
        max_num_seqs: int,
        max_blocks_per_seq: int,
        max_seq_len: int,
        block_size: int,
    ) -> None:
        self.head = head
        self.num_steps = num_steps
        self.block_size = block_size
        self.max_seq_len = max_seq_len
        param = next(head.parameters())
        device = param.device
        self.sizes = capture_sizes(max_num_seqs)
        n = self.sizes[-1]
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)  # first guesses (target ids)
        self.hidden = torch.zeros(n, head.config.hidden_size, dtype=param.dtype, device=device)  # their outputs
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)  # where guess 2 is computed: T - 1
        self.seq_lens = torch.zeros(n, dtype=torch.int32, device=device)  # KV length after that step: T
        self.steps = torch.zeros(n, dtype=torch.int32, device=device)  # forwards that write K/V; 0: padding
        self.block_tables = torch.zeros(n, max_blocks_per_seq, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.rows = torch.arange(n, dtype=torch.int64, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}

    def run(
        self, host: ForwardBatch, steps: torch.Tensor, first_ids: torch.Tensor, hidden: torch.Tensor
    ) -> torch.Tensor:
        """[num_steps, B] guesses 2..k of the B requests of `host` (one decode chunk each at position T - 1);
        `steps` [B]: each row's forwards (k - 1); `first_ids`, `hidden`: guess 1 and the output that made it."""
        n = host.num_requests
        size = self.sizes[bisect.bisect_left(self.sizes, n)] if n <= self.sizes[-1] else None
        if size is None:
            raise ValueError(f"{n} requests guess in one step, more than the {self.sizes[-1]} planned")
        self.input_ids[:n].copy_(first_ids)
        self.hidden[:n].copy_(hidden)
        self.positions[:n].copy_(host.positions, non_blocking=True)
        self.seq_lens[:n].copy_(host.seq_lens, non_blocking=True)
        self.steps[:n].copy_(steps, non_blocking=True)
        self.block_tables[:n, : host.block_tables.shape[1]].copy_(host.block_tables, non_blocking=True)
        if size in self.graphs:
            if size > n:  # padding rows write nothing and attend to nothing
                self.steps[n:size].fill_(0)
                self.positions[n:size].fill_(0)
            self.graphs[size].replay()
            return self.outputs[size][:, :n]
        return self._steps(n)

    def _steps(self, size: int) -> torch.Tensor:
        """The loop itself, over the first `size` rows of the buffers."""
        head, bs = self.head, self.block_size
        ids, hidden, steps = self.input_ids[:size], self.hidden[:size], self.steps[:size]
        positions, seq_lens, tables = self.positions[:size], self.seq_lens[:size], self.block_tables[:size]
        columns = []
        for step in range(self.num_steps):
            # A row past its own steps recomputes its last position (reading only K/V it wrote) and writes nothing.
            offset = torch.minimum(steps - 1, torch.full_like(steps, step)).clamp_min(0)
            pos = positions + offset
            slots = tables.gather(1, (pos // bs).unsqueeze(1)).squeeze(1).to(torch.int64) * bs + pos % bs
            batch = ForwardBatch(
                input_ids=ids,
                positions=pos,
                query_start_loc=self.query_start_loc[: size + 1],
                seq_lens=torch.where(steps > 0, seq_lens + offset, 0),
                max_query_len=1,
                max_seq_len=self.max_seq_len,
                block_tables=tables,
                slot_mapping=torch.where(steps > step, slots, -1),
                logits_indices=self.rows[:size],
                num_decodes=size,
            )
            hidden = head(ids, pos, hidden, batch)
            ids = head.to_target_ids(head.compute_logits(hidden).argmax(dim=-1))
            columns.append(ids)
        return torch.stack(columns)

    @torch.inference_mode()
    def capture(self) -> None:
        """One graph per batch size, largest first so the smaller ones reuse its memory pool."""
        start = time.perf_counter()
        gc.collect()  # see worker.cuda_graphs.capturing
        pool = torch.cuda.graph_pool_handle()
        self.steps.fill_(0)  # warm-up and capture over padding rows: nothing written
        for size in reversed(self.sizes):
            self._steps(size)  # autotuning, lazy init
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with capturing(graph, pool):
                self.outputs[size] = self._steps(size)
            self.graphs[size] = graph
        torch.cuda.synchronize()
        logger.info(
            "captured %d EAGLE-3 guess graphs (%d steps, batch %s) in %.1f s",
            len(self.sizes),
            self.num_steps,
            self.sizes,
            time.perf_counter() - start,
        )
