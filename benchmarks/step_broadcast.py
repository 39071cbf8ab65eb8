"""How long a step's batch takes to reach the other ranks: torch.distributed's broadcast vs a shared-memory queue.

    python benchmarks/step_broadcast.py --world-size 2 --batch-sizes 1,64,256 --context 1024

Rank 0 builds the ForwardBatch of a decode step (`--batch-sizes` requests of `--context` tokens each, 16-token
blocks) the way the model runner does, then sends it to the other ranks `--steps` times by each method and
waits until every rank has it (each acknowledges in a shared counter, the same for both methods):
- `broadcast`: `dist.broadcast_object_list` (what the executor does today; gloo on CPUs, so the figures
  are the CPU path's; on GPUs NCCL moves the pickle through device memory),
- `shm`: the pickle written to a shared-memory buffer and a step counter bumped; the other ranks spin on the
  counter (one node only).
Prints microseconds per step (median, p90) and the pickle's size, and what pickling and unpickling the batch
alone costs on one process.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import sys
import time
from multiprocessing import shared_memory
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from forgellm.worker.forward_batch import SequenceChunk, build_host_batch  # noqa: E402

BLOCK = 16
BUFFER_BYTES = 64 << 20
HEADER = 64  # int64 [0]: step counter, [1]: payload length, [2..]: acknowledgements per rank


def decode_batch(batch: int, context: int) -> object:
    """A decode step's ForwardBatch: `batch` requests, each one new token after `context`."""
    blocks = (context + BLOCK) // BLOCK
    chunks = [SequenceChunk([7], context, list(range(r * blocks, (r + 1) * blocks)), [0]) for r in range(batch)]
    return build_host_batch(chunks, BLOCK)


def run(rank: int, world: int, port: int, args: argparse.Namespace, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    name = f"forgellm-bcast-{port}"
    shm = shared_memory.SharedMemory(name=name, create=rank == 0, size=BUFFER_BYTES if rank == 0 else 0)
    dist.barrier()
    if rank != 0:
        shm.close()
        shm = shared_memory.SharedMemory(name=name)
    header = np.ndarray((HEADER // 8,), dtype=np.int64, buffer=shm.buf)
    if rank == 0:
        header[:] = 0
    dist.barrier()
    acked = 0
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        host = decode_batch(batch, args.context) if rank == 0 else None
        for method in ("broadcast", "shm"):
            times = []
            for _ in range(args.steps + 10):
                acked += 1
                start = time.perf_counter()
                if method == "broadcast":
                    box = [host]
                    dist.broadcast_object_list(box, src=0)
                    received = box[0]
                elif rank == 0:
                    payload = pickle.dumps(host, protocol=pickle.HIGHEST_PROTOCOL)
                    shm.buf[HEADER : HEADER + len(payload)] = payload
                    header[1] = len(payload)
                    header[0] = acked  # published last: the payload is in place
                    received = host
                else:
                    while header[0] < acked:
                        pass
                    received = pickle.loads(shm.buf[HEADER : HEADER + int(header[1])])
                if rank != 0:
                    assert received is not None
                    header[2 + rank] = acked
                else:
                    while any(header[2 + r] < acked for r in range(1, world)):
                        pass
                    times.append(time.perf_counter() - start)
            if rank == 0:
                size = len(pickle.dumps(host, protocol=pickle.HIGHEST_PROTOCOL))
                kept = sorted(times[10:])
                row = {
                    "method": method, "world": world, "batch": batch, "context": args.context, "bytes": size,
                    "median_us": round(statistics.median(kept) * 1e6, 1),
                    "p90_us": round(kept[int(0.9 * len(kept))] * 1e6, 1),
                }  # fmt: skip
                results[f"{method}-{batch}"] = row
                print(json.dumps(row), flush=True)
            dist.barrier()
        if rank == 0:  # what serializing alone costs, on one process
            start = time.perf_counter()
            for _ in range(args.steps):
                pickle.loads(pickle.dumps(host, protocol=pickle.HIGHEST_PROTOCOL))
            row = {"method": "pickle + unpickle only", "batch": batch,
                   "mean_us": round((time.perf_counter() - start) / args.steps * 1e6, 1)}  # fmt: skip
            results[f"pickle-{batch}"] = row
            print(json.dumps(row), flush=True)
    dist.barrier()
    shm.close()
    if rank == 0:
        shm.unlink()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--batch-sizes", default="1,64,256")
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with torch.multiprocessing.Manager() as manager:
        results = manager.dict()
        port = 20000 + os.getpid() % 20000
        mp.spawn(run, args=(args.world_size, port, args, results), nprocs=args.world_size, join=True)
        rows = list(results.values())
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
