"""Weight-only quantized GEMM vs bf16 F.linear at the Llama-3.1-8B shapes: time per token of every projection.

    python benchmarks/int_weight_gemm_bench.py [--rows 1,4,16,64,256,2048] [--sweep [--sweep-seconds 100]]

Each (K, N) is timed alone with triton.testing.do_bench (median, L2 flushed before every call) and counted
as often as one forward pass runs it: 32 x (fused q/k/v 6144x4096, o 4096x4096, fused gate/up 28672x4096,
down 4096x14336) + lm_head 128256x4096. TB/s = weight bytes read (packed weight + scales) / time, against
the 4.27 TB/s device copy of the H200 (REFERENCE.md). "fused" is int_weight_gemm_triton with its
heuristic config (split-K summed by a second kernel), "1-launch" the same with a layer's tile counters
(summed by each tile's last slice), "deq+mm" dequantizes to bf16 then calls cuBLAS (the large-M path).

--sweep samples tile configs (the TILES tuple of triton_int_weight_gemm) for int4 g128 at each M, in a
seeded random order until the time budget is spent, and prints the best per M as a TILES entry.
"""

from __future__ import annotations

import argparse
import functools
import random
import time

import torch
import torch.nn.functional as F
import triton.testing

from forgellm.kernels import triton_int_weight_gemm as tiw
from forgellm.kernels.triton_utils import split_k_counters

COPY_TBPS = 4.27
LAYERS = 32
# name, K, N, times per token
SHAPES = [
    ("qkv", 4096, 6144, LAYERS),
    ("o", 4096, 4096, LAYERS),
    ("gate_up", 4096, 28672, LAYERS),
    ("down", 14336, 4096, LAYERS),
    ("lm_head", 4096, 128256, 1),
]
# name: bits, group size (0 = per-channel), value_type
VARIANTS = {
    "int4-g128": (4, 128, "int"),
    "int4-g32": (4, 32, "int"),
    "int8-ch": (8, 0, "int"),
    "e2m1-g16": (4, 16, "e2m1"),
}
BF16 = torch.bfloat16
DEV = torch.device("cuda")
DEQUANT_MM_ROWS = 64  # time dequantize + mm from this many rows up


def bench_ms(fn, rep: int = 50) -> float:
    """Median GPU milliseconds of fn(), replayed from a CUDA graph as decode steps run it: timing the Python
    call itself measured mostly Triton's launch cost (~40 us), not the kernel. do_bench flushes L2 between
    replays, so the weights come from HBM."""
    fn()  # compile and allocate outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return triton.testing.do_bench(graph.replay, warmup=10, rep=rep, return_mode="median")


def make_weights(variant: str, k: int, n: int) -> tuple:
    """(qweight, scales, zeros, bits, group, value_type): random codes, every bit pattern being valid."""
    bits, group, value_type = VARIANTS[variant]
    group = group or k
    qweight = torch.randint(-(2**31), 2**31, (k * bits // 32, n), device=DEV, dtype=torch.int32)
    scales = (torch.rand(k // group, n, device=DEV) * 0.01 + 0.001).to(BF16)
    return qweight, scales, None, bits, group, value_type


def weight_bytes(args: tuple) -> int:
    return sum(t.numel() * t.element_size() for t in args[:3] if isinstance(t, torch.Tensor))


def row(label: str, times: dict[str, float], total_bytes: float) -> str:
    """One table line: per-shape microseconds, per-token ms, TB/s of weight bytes and share of the copy rate."""
    total = sum(times[name] * count for name, _, _, count in SHAPES)
    tbps = total_bytes / (total * 1e-3) / 1e12
    cells = "".join(f"{times[name] * 1e3:>9.1f}" for name, *_ in SHAPES)
    return f"{label:<22}{cells}{total:>10.3f}{tbps:>8.2f}{tbps / COPY_TBPS:>7.0%}"


def run_table(rows: list[int]) -> None:
    dense = {name: torch.randn(n, k, device=DEV, dtype=BF16) for name, k, n, _ in SHAPES}
    quant = {v: {name: make_weights(v, k, n) for name, k, n, _ in SHAPES} for v in VARIANTS}
    bytes_of = lambda weights: sum(weight_bytes(weights[name]) * count for name, *_, count in SHAPES)
    dense_bytes = sum(w.numel() * 2 * count for (name, *_, count), w in zip(SHAPES, dense.values()))
    for variant, weights in quant.items():  # a quick parity check before timing
        x = torch.randn(16, 4096, device=DEV, dtype=BF16)
        a, b = tiw.int_weight_gemm_triton(x, *weights["qkv"]), tiw.int_weight_dequant_mm_triton(x, *weights["qkv"])
        print(f"{variant}: fused vs deq+mm rel err {((a - b).float().norm() / b.float().norm()).item():.2e}")
    header = f"{'':<22}" + "".join(f"{name:>9}" for name, *_ in SHAPES) + f"{'ms/token':>10}{'TB/s':>8}{'copy':>7}"
    for m in rows:
        print(f"\nM = {m}  (per-shape columns in microseconds)\n{header}")
        xs = {k: torch.randn(m, k, device=DEV, dtype=BF16) for k in {k for _, k, _, _ in SHAPES}}
        times = {name: bench_ms(functools.partial(F.linear, xs[k], dense[name])) for name, k, *_ in SHAPES}
        print(row("bf16 F.linear", times, dense_bytes))
        for variant, weights in quant.items():
            one_launch = functools.partial(tiw.int_weight_gemm_triton, split_k_counters=split_k_counters(DEV))
            paths = [("fused", tiw.int_weight_gemm_triton), ("1-launch", one_launch)]
            if m >= DEQUANT_MM_ROWS:
                paths.append(("deq+mm", tiw.int_weight_dequant_mm_triton))
            for path, fn in paths:
                times = {name: bench_ms(functools.partial(fn, xs[k], *weights[name])) for name, k, *_ in SHAPES}
                print(row(f"{variant} {path}", times, bytes_of(weights)))


def sweep_candidates(m: int) -> list[tuple]:
    """TILES tuples (block_m, block_n, packed rows, num_warps, num_stages, programs per SM) worth trying at m."""
    block_ms = [1, 16] if m <= 16 else [16, 32, 64] if m <= 64 else [64, 128]
    grid = [
        (bm, bn, bkp, warps, stages, per_sm)
        for bm in block_ms
        for bn in (32, 64, 128, 256)
        for bkp in (16, 32, 64)
        for warps in (2, 4, 8)
        for stages in (1, 2, 3, 4)
        for per_sm in (1, 2, 4, 8)
    ]
    random.Random(m).shuffle(grid)
    return grid


def run_sweep(rows: list[int], seconds: float) -> None:
    """Time every candidate on all shapes (per-token total) until each M's share of the budget is spent."""
    weights = {name: make_weights("int4-g128", k, n) for name, k, n, _ in SHAPES}
    for m in rows:
        xs = {k: torch.randn(m, k, device=DEV, dtype=BF16) for k in {k for _, k, _, _ in SHAPES}}
        deadline, results = time.monotonic() + seconds / len(rows), []
        default = tiw.TILES
        for tile in [None, *sweep_candidates(m)]:  # None: the current heuristic
            if time.monotonic() > deadline:
                break
            tiw.TILES = default if tile is None else [(None, tile)]  # pick_config reads the table
            try:
                total = 0.0
                for name, k, n, count in SHAPES:
                    cfg = tiw.pick_config(m, n, k, 4, 128, xs[k].device)
                    call = functools.partial(tiw.int_weight_gemm_triton, xs[k], *weights[name], config=cfg)
                    total += count * bench_ms(call, rep=20)
                results.append((total, tile))
            except Exception as exc:  # out of shared memory or registers: not a candidate
                print(f"  M={m} {tile}: {type(exc).__name__}")
            finally:
                tiw.TILES = default
        results.sort(key=lambda r: r[0])
        current = next(t for t, tile in results if tile is None)
        print(f"\nM = {m}: {len(results)} configs, heuristic {current:.3f} ms/token; best:")
        for total, tile in results[:5]:
            print(f"  {total:.3f} ms/token  ({m}, {tile}),")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,4,16,64,256,2048", help="comma-separated M values")
    parser.add_argument("--sweep", action="store_true", help="sample tile configs for int4 g128 instead")
    parser.add_argument("--sweep-seconds", type=float, default=100.0, help="time budget of the sweep")
    args = parser.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    if args.sweep:
        run_sweep(rows if args.rows != parser.get_default("rows") else [1, 16], args.sweep_seconds)
    else:
        run_table(rows)


if __name__ == "__main__":
    main()
