"""cuBLAS vs cuBLASLt for the decode GEMMs of the Llama-3.1-8B shape: achieved weight bandwidth.

At batch 1 the projections are weight reads; cuBLAS ran q/k/v and o at ~72% of bandwidth in the
step profile. torch can route GEMMs to cuBLASLt instead (torch.backends.cuda.preferred_blas_library).

    python benchmarks/gemm_backends.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# (name, out features, in features) of one Llama-3.1-8B layer, and the LM head
SHAPES = [
    ("qkv", 6144, 4096),
    ("o", 4096, 4096),
    ("gate_up", 28672, 4096),
    ("down", 4096, 14336),
    ("lm_head", 128256, 4096),
]
# Several copies of each weight, read in turn, so the 50 MB L2 cache cannot serve repeats.
ROTATION_BYTES = 512 * 2**20


def time_ms(x: torch.Tensor, weights: list[torch.Tensor], replays: int = 10) -> float:
    """Mean time of one F.linear, from CUDA-graph replays (no launch overhead, as in decode graphs)."""
    F.linear(x, weights[0])
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for weight in weights:
            F.linear(x, weight)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / (replays * len(weights))


def main() -> None:
    torch.manual_seed(0)
    rows = []
    for backend in ("cublas", "cublaslt"):
        torch.backends.cuda.preferred_blas_library(backend)
        for name, n, k in SHAPES:
            copies = max(2, -(-ROTATION_BYTES // (n * k * 2)))
            weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
            for m in (1, 16, 256):
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                ms = time_ms(x, weights)
                rows.append((backend, name, m, ms * 1e3, n * k * 2 / ms / 1e6))
            del weights
    print(f"{'backend':10}{'gemm':10}{'M':>5}{'us':>10}{'weight GB/s':>13}")
    for backend, name, m, us, gbps in rows:
        print(f"{backend:10}{name:10}{m:5d}{us:10.1f}{gbps:13.0f}")


if __name__ == "__main__":
    main()
