"""TensorParallelExecutor: rank 0's side of tensor and pipeline parallelism on one node.

The engine process is rank 0: it schedules, samples and owns its shard of the model (the first pipeline
stage's first tensor-parallel share). Ranks 1 .. n-1 are worker processes (forgellm/worker/tp_worker.py),
each owning its shard and the KV cache of its layers. They join one torch.distributed process group (gloo on
CPUs, NCCL on GPUs) and run every forward pass in lockstep: rank 0 broadcasts each step's batch, every rank
runs its part (tensor-parallel collectives pair up within a stage, stages hand the residual stream on, the
last stage sends rank 0 the logits), and only rank 0 reads the logits. A rank that dies or hangs surfaces
as a collective timeout on rank 0, not a hang.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import socket
import subprocess
import sys
import time
from collections import deque
from typing import Any

import torch
import torch.distributed as dist

from forgellm.config import EngineConfig
from forgellm.distributed.heartbeat import Heartbeats
from forgellm.distributed.messages import PostedMessage, message_group, post_message, send_message
from forgellm.distributed.parallel_state import ParallelContext, join_groups
from forgellm.distributed.placement import first_gpu, ranks_per_node
from forgellm.distributed.torchrun import INIT_METHOD, check_torchrun_config, torchrun_rank
from forgellm.errors import ConfigError, EngineDeadError
from forgellm.hf.config_types import ModelArchConfig

EXIT_GRACE_S = 1.0


def collective_timeout(config: EngineConfig) -> datetime.timedelta:
    """How long a collective may wait for a rank (then it raises: a hung rank ends the engine, not a hang)."""
    return datetime.timedelta(seconds=config.distributed_timeout_s)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_shardable(
    arch: ModelArchConfig, tp_size: int, device: torch.device, pp_size: int = 1, nnodes: int = 1
) -> None:
    """A ConfigError naming the numbers when `arch` cannot be split over `tp_size` ranks in each of `pp_size`
    pipeline stages, spread over `nnodes` nodes like this one (whose GPUs from `device`'s on hold its ranks)."""
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
    if arch.num_hidden_layers < pp_size:
        raise ConfigError(
            f"pipeline_parallel_size {pp_size} cannot split {arch.num_hidden_layers} decoder layers: every stage needs "
            "at least one"
        )
    local, first = tp_size * pp_size // nnodes, device.index or 0
    if device.type == "cuda" and torch.cuda.device_count() < first + local:
        raise ConfigError(
            f"tensor_parallel_size {tp_size} x pipeline_parallel_size {pp_size} over {nnodes} node(s) needs {local} "
            f"GPUs on each, from GPU {first}; {torch.cuda.device_count()} visible"
        )


def start_rank_processes(
    config: EngineConfig, ranks: range, init_method: str, heartbeat: str | None = None
) -> list[subprocess.Popen]:
    """Start one worker process per rank in `ranks` on this node (python -m forgellm.worker.tp_worker)."""
    options = json.dumps(dataclasses.asdict(config))
    world = config.tensor_parallel_size * config.pipeline_parallel_size
    command = [sys.executable, "-m", "forgellm.worker.tp_worker", "--world-size", str(world)]
    command += ["--init-method", init_method, "--config", options]
    if heartbeat is not None:
        command += ["--heartbeat", heartbeat]
    # Plain processes, not multiprocessing children: the engine may itself run in a daemonic child (forgellm
    # serve), which multiprocessing forbids to have children.
    return [subprocess.Popen([*command, "--rank", str(rank)]) for rank in ranks]


def run_node(config: EngineConfig) -> int:
    """Node `config.node_rank` > 0 of several: run this node's ranks until rank 0 (on node 0) stops them; the
    exit status is non-zero when a rank failed, so a supervisor sees it."""
    per_node = ranks_per_node(config)
    first = config.node_rank * per_node
    workers = start_rank_processes(config, range(first, first + per_node), _init_method(config))
    try:
        codes = [worker.wait() for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
                worker.wait()
    return max((abs(code) for code in codes), default=0)


def _init_method(config: EngineConfig) -> str:
    return f"tcp://{config.master_addr}:{config.master_port or _free_port()}"


class TensorParallelExecutor:
    """Starts this node's other ranks, joins the process group as rank 0 (with the other nodes' ranks, which
    `run_node` starts there; or, under torchrun, with the ranks it started), and broadcasts to them."""

    def __init__(self, config: EngineConfig, device: torch.device) -> None:
        self.tp_size, self.pp_size = config.tensor_parallel_size, config.pipeline_parallel_size
        self.world_size = self.tp_size * self.pp_size
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        self.first_gpu = first_gpu(config.device)  # rank 0's; the other local ranks' follow it
        if device.type == "cuda":  # NCCL's communicators use the current device: this rank's, not GPU 0
            torch.cuda.set_device(self.first_gpu)
        launched = torchrun_rank()
        if launched is not None:  # torchrun started every rank: none to start here, none to watch
            check_torchrun_config(config, launched)
            init_method, self.heartbeats, self.local_ranks, self.workers = INIT_METHOD, None, range(0), []
            self.nnodes = launched.nnodes
        else:
            init_method = _init_method(config)
            self.heartbeats = Heartbeats.create(self.world_size)
            # This node's other ranks; with several nodes the others start theirs (`run_node`), all meet here.
            self.local_ranks = range(1, ranks_per_node(config))
            self.workers = start_rank_processes(config, self.local_ranks, init_method, self.heartbeats.path)
            self.nnodes = config.nnodes
        self.timeout = collective_timeout(config)
        dist.init_process_group(
            self.backend, init_method=init_method, rank=0, world_size=self.world_size, timeout=self.timeout
        )
        self.messages = message_group()  # before join_groups: every rank makes its groups in the same order
        self.parallel = join_groups(0, self.tp_size, self.pp_size, self.heartbeats)
        self._posted: deque[PostedMessage] = deque()  # steps' batches sent without waiting, oldest first
        self._closed = False
        self._failed = False  # a collective failed: the ranks are out of step

    @property
    def _kind(self) -> str:
        return "tensor-parallel" if self.pp_size == 1 else "parallel"

    def describe(self, arch: ModelArchConfig, device: torch.device) -> str:
        """Every rank's device and share of the model, for the start-up log."""
        ranks = []
        per_node = self.world_size // self.nnodes
        for rank in range(self.world_size):
            where = f"cuda:{self.first_gpu + rank % per_node}" if device.type == "cuda" else device.type
            if self.nnodes > 1:
                where = f"node {rank // per_node} {where}"
            pp_rank, tp_rank = divmod(rank, self.tp_size)
            context = ParallelContext(tp_rank, self.tp_size, pp_rank, self.pp_size)
            local, first = context.kv_heads(arch.num_key_value_heads)
            heads = arch.num_attention_heads // self.tp_size
            kv = f"KV head{'s' if local > 1 else ''} {first}" + (f"-{first + local - 1}" if local > 1 else "")
            share = f"{heads} of {arch.num_attention_heads} query heads, {kv}"
            if self.pp_size > 1:
                layers = context.stage_layers(arch.num_hidden_layers)
                share = f"stage {pp_rank} (layers {layers.start}-{layers.stop - 1}), " + share
            ranks.append(f"rank {rank} on {where}: {share}")
        kind = (
            f"tensor parallel {self.tp_size} x pipeline parallel {self.pp_size}"
            if self.pp_size > 1
            else ("tensor parallel")
        )
        return f"{kind} over {self.world_size} ranks ({self.backend}): " + "; ".join(ranks)

    def broadcast(self, value: Any) -> None:
        """Send `value` (a step's batch, the KV-cache size, or None to stop) to every other rank; a rank that
        is gone, or a collective that times out, is an EngineDeadError naming it."""
        self.post(value)
        while self._posted:
            self.wait_posted()

    def post(self, value: Any) -> None:
        """Start sending `value` to every other rank without waiting for them to take it (a pipeline's later
        stages are still busy with the batches before); `wait_posted` settles it, oldest first."""
        self.check_workers()
        if self.heartbeats is not None:
            self.heartbeats.beat()
        try:
            self._posted.append(post_message(value, self.messages))
        except RuntimeError as exc:
            raise self.failure(exc) from exc

    def wait_posted(self) -> None:
        """Wait until every rank has taken the oldest message posted (an EngineDeadError naming the rank that
        did not within the timeout)."""
        try:
            self._posted.popleft().wait(self.timeout)
        except RuntimeError as exc:  # gloo / NCCL: a peer closed the connection or the timeout passed
            raise self.failure(exc) from exc

    def failure(self, exc: BaseException) -> EngineDeadError:
        """The EngineDeadError for a collective (or a stage hand-off) that raised `exc`: naming a rank that exited,
        else one that never picked up the step (hung or stopped), else one stuck inside the forward pass (by the
        heartbeat's counts), else saying what is known. Any other error in
        rank 0's part of a forward pass ends the engine too: the other ranks went on without it."""
        self._failed = True
        if not isinstance(exc, RuntimeError):
            return EngineDeadError(
                f"rank 0's part of a {self._kind} forward pass failed, leaving the ranks out of step: "
                f"{type(exc).__name__}: {exc}"
            )
        # A rank's sockets close a moment before its exit can be collected: give a dying rank that moment.
        deadline = time.monotonic() + EXIT_GRACE_S
        while True:
            try:
                self.check_workers()
            except EngineDeadError as dead:
                return dead
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        lagging = [] if self.heartbeats is None else self.heartbeats.lagging(self.local_ranks)
        if lagging:
            names = ", ".join(f"rank {rank} (picked up {got} of {sent} steps)" for rank, got, sent in lagging)
            return EngineDeadError(
                f"{self._kind} {names} did not answer within {self.timeout.total_seconds():g} s "
                f"(distributed_timeout_s): hung or stopped; {exc}"
            )
        stuck = (
            None
            if self.heartbeats is None or self.nnodes > 1
            else self.heartbeats.stuck_inside_forward(self.tp_size, self.pp_size)
        )
        if stuck is not None:
            return EngineDeadError(
                f"{self._kind} {stuck}; nothing moved within {self.timeout.total_seconds():g} s "
                f"(distributed_timeout_s): {exc}"
            )
        where = " or on another node" if self.nnodes > 1 else ""
        if self.heartbeats is None:
            where += "; under torchrun, its log names a rank that exited"
        return EngineDeadError(f"a {self._kind} collective failed (a rank hung inside a forward pass{where}): {exc}")

    def finish_forward(self) -> None:
        """Rank 0 finished its part of a step's forward pass (a stuck rank is told apart by these counts)."""
        if self.heartbeats is not None:
            self.heartbeats.finish_forward()

    def check_workers(self) -> None:
        """Raise naming the rank whose process has ended (instead of waiting for a collective timeout)."""
        for rank, worker in enumerate(self.workers, start=1):
            if worker.poll() is not None:
                raise EngineDeadError(f"{self._kind} rank {rank} exited (exit code {worker.returncode})")

    def shutdown(self) -> None:
        """Stop the workers and leave the process group (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self._failed and all(worker.poll() is None for worker in self.workers):
                send_message(None, self.messages, self.timeout)
        except RuntimeError:  # a rank that hangs or is gone cannot be told: it is killed below
            self._failed = True
        finally:
            if self.heartbeats is not None:
                self.heartbeats.close(remove=True)
            for worker in self.workers:
                try:
                    worker.wait(timeout=0 if self._failed else 10)  # after a failure, no rank is listening
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
            # Drop the message group's handle too: a process forked later (a multiprocessing manager) aborts
            # when it garbage-collects the handle of a destroyed group.
            self.messages = None
            self._posted.clear()
            if dist.is_initialized():
                dist.destroy_process_group()
