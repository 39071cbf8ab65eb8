"""TensorParallelExecutor: rank 0's side of tensor parallelism on one node.

The engine process is rank 0: it schedules, samples and owns its shard of the model. Ranks 1 .. n-1 are
worker processes (forgellm/worker/tp_worker.py), each owning its shard and KV cache. They join one
torch.distributed process group (gloo on CPUs, NCCL on GPUs) and run every forward pass in lockstep:
rank 0 broadcasts each step's batch, every rank runs the same forward (its collectives pair up with
the others'), and only rank 0 reads the logits. A rank that dies or hangs surfaces as a collective
timeout on rank 0, not a hang.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import socket
import subprocess
import sys
from typing import Any

import torch
import torch.distributed as dist

from forgellm.config import EngineConfig
from forgellm.distributed.parallel_state import ParallelContext
from forgellm.errors import ConfigError, EngineDeadError
from forgellm.hf.config_types import ModelArchConfig

COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=120)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_shardable(arch: ModelArchConfig, tp_size: int, device: torch.device) -> None:
    """A ConfigError naming the numbers when `arch` cannot be split over `tp_size` ranks here."""
    heads, kv_heads = arch.num_attention_heads, arch.num_key_value_heads
    problems = []
    if heads % tp_size:
        problems.append(f"{heads} attention heads")
    if kv_heads % tp_size if kv_heads >= tp_size else tp_size % kv_heads:
        problems.append(f"{kv_heads} KV heads (which must divide, or be a multiple of, the ranks)")
    if arch.intermediate_size % tp_size:
        problems.append(f"an MLP of {arch.intermediate_size}")
    if problems:
        raise ConfigError(f"tensor_parallel_size {tp_size} cannot split {' and '.join(problems)}")
    if device.type == "cuda" and torch.cuda.device_count() < tp_size:
        raise ConfigError(f"tensor_parallel_size {tp_size} needs {tp_size} GPUs; {torch.cuda.device_count()} visible")


class TensorParallelExecutor:
    """Starts ranks 1 .. tp_size-1, joins their process group as rank 0, and broadcasts to them."""

    def __init__(self, config: EngineConfig, device: torch.device) -> None:
        self.world_size = config.tensor_parallel_size
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        options = json.dumps(dataclasses.asdict(config))
        # Plain processes (python -m forgellm.worker.tp_worker), not multiprocessing children: the engine may
        # itself run in a daemonic child (forgellm serve), which multiprocessing forbids to have children.
        self.workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "forgellm.worker.tp_worker",
                    "--rank",
                    str(rank),
                    "--world-size",
                    str(self.world_size),
                    "--init-method",
                    init_method,
                    "--config",
                    options,
                ]
            )  # fmt: skip
            for rank in range(1, self.world_size)
        ]
        dist.init_process_group(
            self.backend, init_method=init_method, rank=0, world_size=self.world_size, timeout=COLLECTIVE_TIMEOUT
        )
        self.parallel = ParallelContext(tp_rank=0, tp_size=self.world_size)
        self._closed = False

    def describe(self, arch: ModelArchConfig, device: torch.device) -> str:
        """Every rank's device and share of the model, for the start-up log."""
        ranks = []
        for rank in range(self.world_size):
            where = f"cuda:{rank}" if device.type == "cuda" else device.type
            local, first = ParallelContext(rank, self.world_size).kv_heads(arch.num_key_value_heads)
            heads = arch.num_attention_heads // self.world_size
            kv = f"KV head{'s' if local > 1 else ''} {first}" + (f"-{first + local - 1}" if local > 1 else "")
            ranks.append(f"rank {rank} on {where}: {heads} of {arch.num_attention_heads} query heads, {kv}")
        return f"tensor parallel over {self.world_size} ranks ({self.backend}): " + "; ".join(ranks)

    def broadcast(self, value: Any) -> None:
        """Send `value` (a step's batch, the KV-cache size, or None to stop) to every other rank; a rank that
        is gone, or a collective that times out, is an EngineDeadError naming it."""
        self.check_workers()
        try:
            dist.broadcast_object_list([value], src=0)
        except RuntimeError as exc:  # gloo / NCCL: a peer closed the connection or the timeout passed
            self.check_workers()
            raise EngineDeadError(f"a tensor-parallel collective failed: {exc}") from exc

    def check_workers(self) -> None:
        """Raise naming the rank whose process has ended (instead of waiting for a collective timeout)."""
        for rank, worker in enumerate(self.workers, start=1):
            if worker.poll() is not None:
                raise EngineDeadError(f"tensor-parallel rank {rank} exited (exit code {worker.returncode})")

    def shutdown(self) -> None:
        """Stop the workers and leave the process group (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            if all(worker.poll() is None for worker in self.workers):
                dist.broadcast_object_list([None], src=0)
        finally:
            for worker in self.workers:
                try:
                    worker.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
            if dist.is_initialized():
                dist.destroy_process_group()
