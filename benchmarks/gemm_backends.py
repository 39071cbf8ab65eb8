"""cuBLAS vs cuBLASLt, and weight layouts, for the decode GEMMs of the Llama-3.1-8B shape: weight bandwidth.

At batch 1 the projections are weight reads; cuBLAS ran q/k/v and o at ~72% of bandwidth in the
step profile. torch can route GEMMs to cuBLASLt instead (torch.backends.cuda.preferred_blas_library),
and a weight stored transposed ([in, out], `x @ w`) makes cuBLAS choose other kernels than the
nn.Linear layout ([out, in], `F.linear(x, w)`).

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


def time_ms(x: torch.Tensor, weights: list[torch.Tensor], transposed: bool, replays: int = 10) -> float:
    """Mean time of one GEMM, from CUDA-graph replays (no launch overhead, as in decode graphs)."""

    def gemm(weight: torch.Tensor) -> torch.Tensor:
        return x @ weight if transposed else F.linear(x, weight)

    gemm(weights[0])
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for weight in weights:
            gemm(weight)
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
    for backend, transposed in (("cublas", False), ("cublas", True), ("cublaslt", False), ("cublaslt", True)):
        torch.backends.cuda.preferred_blas_library(backend)
        label = f"{backend}/{'in,out' if transposed else 'out,in'}"
        for name, n, k in SHAPES:
            copies = max(2, -(-ROTATION_BYTES // (n * k * 2)))
            shape = (k, n) if transposed else (n, k)
            weights = [torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
            for m in (1, 16, 256):
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                ms = time_ms(x, weights, transposed)
                rows.append((label, name, m, ms * 1e3, n * k * 2 / ms / 1e6))
            del weights
    print(f"{'backend/layout':18}{'gemm':10}{'M':>5}{'us':>10}{'weight GB/s':>13}")
    for label, name, m, us, gbps in rows:
        print(f"{label:18}{name:10}{m:5d}{us:10.1f}{gbps:13.0f}")


if __name__ == "__main__":
    main()
