"""FP8 W8A8 GEMMs at the Llama-3.1-8B shapes: bf16 cuBLAS vs torch._scaled_mm vs forgellm's Triton GEMM.

    python benchmarks/fp8_gemm_bench.py [--ms 1,4,16] [--lm-head]       # the table (~1-2 min on an H200)
    python benchmarks/fp8_gemm_bench.py --sweep [--sweep-strategy block]   # Triton tiles at small M (~3 min)

Each GEMM is timed as a CUDA graph of calls that rotate over copies of its weight (>= 256 MB per
replay, so the 60 MB L2 serves no repeats) with triton.testing.do_bench (median, L2 flushed before
each replay): the GPU time the decode graphs see, without Triton's Python launch cost. A layer is
qkv 6144x4096, o 4096x4096, gate|up 28672x4096, down 4096x14336; totals are for 32 layers
(+ lm_head 128256x4096 with --lm-head). TB/s counts the weight bytes (the floor at small M; the
H200 copies at 4.27 TB/s), TFLOP/s 2*M*N*K. "+q" rows include the activation quantization (bf16 x
in); the others start from x already in fp8. The crossover lines give fp8_linear's thresholds.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math

import torch
import torch.nn.functional as F
import triton.testing

from forgellm import kernels
from forgellm.kernels.fp8_linear import scaled_mm_fp8
from forgellm.kernels.triton_fp8_gemm import Fp8GemmConfig, fp8_matmul_triton, pick_config
from forgellm.kernels.triton_utils import num_sms

LAYER = [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336)]
LM_HEAD = ("lm_head", 128256, 4096)
LAYERS = 32
ROTATION_BYTES = 256 * 2**20
FP8, BF16 = torch.float8_e4m3fn, torch.bfloat16
# (label, activation strategy, weight scale kind, gemm(x_q, x_scale, w, w_scale) -> bf16 y)
VARIANTS = [
    ("scaled_mm tensor", "static", "tensor", lambda *a: scaled_mm_fp8(*a, BF16)),
    ("scaled_mm rowwise", "token", "channel", lambda *a: scaled_mm_fp8(*a, BF16)),
    ("scaled_mm block", "group", "block", lambda *a: scaled_mm_fp8(*a, BF16)),  # torch on cuBLASLt >= 12.9
    ("triton tensor", "static", "tensor", lambda *a: fp8_matmul_triton(*a, BF16)),
    ("triton channel", "token", "channel", lambda *a: fp8_matmul_triton(*a, BF16)),
    ("triton block", "group", "block", lambda *a: fp8_matmul_triton(*a, BF16)),
]


class Shape:
    """Copies of one weight in bf16 and fp8, its three kinds of fp8 scales, and the activation quantizers."""

    def __init__(self, n: int, k: int) -> None:
        self.n, self.k = n, k
        self.bf16 = [torch.randn(n, k, device="cuda", dtype=BF16) for _ in range(copies(n * k * 2))]
        self.fp8 = [torch.randn(n, k, device="cuda", dtype=BF16).to(FP8) for _ in range(copies(n * k))]
        self.scales = {
            "tensor": torch.tensor(1e-2, device="cuda"),
            "channel": torch.rand(n, 1, device="cuda") * 1e-2,
            "block": torch.rand(math.ceil(n / 128), math.ceil(k / 128), device="cuda") * 1e-2,
        }
        self.input_scale = torch.tensor(2e-2, device="cuda")

    def quantize(self, x: torch.Tensor, act: str):
        if act == "token":
            return kernels.quantize_fp8_per_token(x)
        if act == "group":
            return kernels.quantize_fp8_per_token_group(x, 128)
        return kernels.quantize_fp8_static(x, self.input_scale)


def copies(weight_bytes: int) -> int:
    return max(2, math.ceil(ROTATION_BYTES / weight_bytes))


def graph_us(calls: list) -> float:
    """GPU microseconds per call, from do_bench over a CUDA graph of all the calls."""
    for call in calls:
        call()  # compile, cuBLAS workspaces: nothing new may happen under capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    ms = triton.testing.do_bench(graph.replay, warmup=5, rep=25, return_mode="median")
    return ms * 1e3 / len(calls)


def fp8_calls(shape: Shape, x: torch.Tensor, act: str, wkind: str, gemm, with_quant: bool) -> list:
    """One call per fp8 weight copy; with_quant quantizes x inside each call."""
    scale = shape.scales[wkind]

    def quantize_and_multiply(w: torch.Tensor) -> torch.Tensor:
        return gemm(*shape.quantize(x, act), w, scale)

    if with_quant:
        return [functools.partial(quantize_and_multiply, w) for w in shape.fp8]
    x_q, x_scale = shape.quantize(x, act)
    return [functools.partial(gemm, x_q, x_scale, w, scale) for w in shape.fp8]


def bench_table(ms: list[int], shapes: list[tuple[str, int, int]]) -> None:
    built = {name: Shape(n, k) for name, n, k in shapes}
    rows = []  # (label, m, {shape: us})
    for m in ms:
        xs = {name: torch.randn(m, k, device="cuda", dtype=BF16) for name, _, k in shapes}
        times = {
            name: graph_us([functools.partial(F.linear, xs[name], w) for w in built[name].bf16]) for name, *_ in shapes
        }
        rows.append(("bf16 F.linear", m, times))
        for (label, act, wkind, gemm), with_quant in itertools.product(VARIANTS, (False, True)):
            times = {}
            for name, *_ in shapes:
                try:
                    times[name] = graph_us(fp8_calls(built[name], xs[name], act, wkind, gemm, with_quant))
                except (RuntimeError, ValueError, NotImplementedError) as exc:  # a _scaled_mm refusing: say so
                    print(f"{label} M={m} {name}: {str(exc).splitlines()[0][:150]}")
                    times[name] = math.nan
            rows.append((label + (" +q" if with_quant else ""), m, times))
    print_table(rows, shapes)
    print_crossovers(rows, ms, shapes)


def totals(m: int, times: dict, shapes, label: str) -> tuple[float, float, float]:
    """(ms for 32 layers [+ lm_head once], TB/s of weight bytes, TFLOP/s)."""
    per_elem = 2 if label.startswith("bf16") else 1
    counts = {name: 1 if name == "lm_head" else LAYERS for name, *_ in shapes}
    us = sum(times[name] * counts[name] for name, *_ in shapes)
    weight_bytes = sum(n * k * per_elem * counts[name] for name, n, k in shapes)
    flops = sum(2 * m * n * k * counts[name] for name, n, k in shapes)
    return us / 1e3, weight_bytes / us / 1e6, flops / us / 1e6


def print_table(rows, shapes) -> None:
    names = [name for name, *_ in shapes]
    print(
        f"{'variant':22}{'M':>6}"
        + "".join(f"{n + ' us':>12}" for n in names)
        + f"{'total ms':>10}{'TB/s':>7}{'TFLOP/s':>9}"
    )
    for label, m, times in rows:
        total_ms, tbps, tflops = totals(m, times, shapes, label)
        cells = "".join(f"{times[n]:12.1f}" for n in names)
        print(f"{label:22}{m:6d}{cells}{total_ms:10.3f}{tbps:7.2f}{tflops:9.1f}")


def print_crossovers(rows, ms, shapes) -> None:
    """The smallest M from which _scaled_mm (quantization included) beats Triton at every larger M."""
    total = {(label, m): totals(m, times, shapes, label)[0] for label, m, times in rows}
    for constant, cublas, triton_label in (
        ("SCALED_MM_MIN_M_TENSORWISE", "scaled_mm tensor +q", "triton tensor +q"),
        ("SCALED_MM_MIN_M_ROWWISE", "scaled_mm rowwise +q", "triton channel +q"),
        ("SCALED_MM_MIN_M_BLOCKWISE", "scaled_mm block +q", "triton block +q"),
    ):
        wins = [total[(cublas, m)] <= total[(triton_label, m)] for m in ms]  # NaN (refused) is no win
        first = next((m for i, m in enumerate(ms) if all(wins[i:])), None)
        print(f"crossover: {constant} = {first}  ({cublas} vs {triton_label}; None: Triton at every M)")


def sweep(ms: list[int], strategy: str) -> None:
    """Every tile config at the given M over the layer's shapes; prints the best per shape and overall."""
    act = "group" if strategy == "block" else "token"
    block_ks = (128,) if strategy == "block" else (128, 256)
    grid = list(itertools.product((32, 64, 128), block_ks, (1, 2, 4, 8), (True, False), (3, 4)))
    built = {name: Shape(n, k) for name, n, k in LAYER}
    for m in ms:
        results = {}
        for name, _, k in LAYER:
            shape = built[name]
            x_q, x_scale = shape.quantize(torch.randn(m, k, device="cuda", dtype=BF16), act)
            scale = shape.scales[strategy]
            bm = max(16, 1 << (m - 1).bit_length())  # the tokens in one tile
            configs = [Fp8GemmConfig(bm, bn, bk, split, swap, 4, stages) for bn, bk, split, swap, stages in grid]
            for cfg in [None, *configs]:  # None: the kernel's own choice (pick_config)
                try:
                    gemm = functools.partial(fp8_matmul_triton, x_q, x_scale, w_scale=scale, out_dtype=BF16, config=cfg)
                    results[(name, cfg)] = graph_us([functools.partial(gemm, w=w) for w in shape.fp8])
                except Exception as exc:  # a config the compiler refuses (e.g. out of shared memory)
                    results[(name, cfg)] = math.inf
                    print(f"M={m} {name} {cfg}: {type(exc).__name__}")
        print(f"\nM={m}, {strategy} weights: best per shape (us, weight TB/s), then pick_config's")
        for name, n, k in LAYER:
            best = min((cfg for (nm, cfg) in results if nm == name and cfg), key=lambda c: results[(name, c)])
            picked = pick_config(m, n, k, 128 if strategy == "block" else None, num_sms(torch.device("cuda")))
            for label, us, cfg in (("best", results[(name, best)], best), ("default", results[(name, None)], picked)):
                print(f"  {name:8} {label:8} {us:8.1f} us {n * k / us / 1e6:6.2f} TB/s  {cfg}")
        layer = {cfg: sum(results[(name, cfg)] for name, *_ in LAYER) for cfg in {c for (_, c) in results}}
        print(f"  pick_config's layer: {layer.pop(None):.1f} us")
        print("  one config for the whole layer (us per layer):")
        for cfg in sorted(layer, key=layer.get)[:5]:
            print(f"    {layer[cfg]:8.1f}  {cfg}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ms", default=None, help="comma-separated M values")
    parser.add_argument("--lm-head", action="store_true", help="add the 128256x4096 LM head (once per token)")
    parser.add_argument("--sweep", action="store_true", help="sweep Triton tile configs instead of the table")
    parser.add_argument("--sweep-strategy", default="channel", choices=("channel", "block"))
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.sweep:
        sweep([int(m) for m in (args.ms or "1,16").split(",")], args.sweep_strategy)
    else:
        ms = [int(m) for m in (args.ms or "1,4,16,64,256,1024,4096").split(",")]
        bench_table(ms, LAYER + ([LM_HEAD] if args.lm_head else []))


if __name__ == "__main__":
    main()
