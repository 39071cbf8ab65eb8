"""Triton kernels on the GPU: parity with the references at Llama-3.1-8B shapes, then timings vs the roofline.

    python benchmarks/kernels.py [--json PATH] [--sweep] [--skip-checks]

Times are do_bench medians (L2 flushed before every call). "eager" times one Python call (launch
overhead included when it exceeds the GPU time); "graph" is the GPU time per call from a CUDA graph
of calls rotating over input copies (>= 256 MB per replay, so little stays in the 60 MB L2). GB/s
counts each input read once and each output written once, against the 4.27 TB/s device copy
ceiling measured on the H200 (REFERENCE.md); a read-only stream can exceed it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math

import torch
import torch.nn.functional as F
import triton.testing

from forgellm import kernels
from forgellm.kernels.activation import silu_and_mul_ref
from forgellm.kernels.attention import paged_attention_ref
from forgellm.kernels.kv_cache import write_kv_cache_ref
from forgellm.kernels.norm import fused_add_rms_norm_ref, rms_norm_ref
from forgellm.kernels.rotary import apply_rotary_ref
from forgellm.kernels.rotary_kv import rotary_and_write_kv_ref
from forgellm.kernels.triton_attention import paged_attention_triton
from forgellm.kernels.triton_decode_attention import DecodeConfig
from forgellm.kernels.triton_prefill_attention import PrefillConfig

COPY_GBPS = 4270.0
HQ, HKV, D, HIDDEN, MLP, BS = 32, 8, 128, 4096, 14336, 16  # Llama-3.1-8B, 16-token pages
BF16 = torch.bfloat16
DEV = torch.device("cuda")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64."""
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def bench_ms(fn) -> float:
    """Median milliseconds of fn() over ~100 ms of calls."""
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def paged_batch(lens: list[int], new: list[int], dtype=BF16, hq=HQ, hkv=HKV, d=D, bs=BS):
    """(q, k_cache, v_cache, block_tables, query_start_loc, seq_lens) with scattered pages, and max_query_len."""
    pages = [math.ceil(n / bs) for n in lens]
    num_blocks = sum(pages) + 1  # block 0 stays a padding target
    k_cache = torch.empty(num_blocks, bs, hkv, d, dtype=dtype, device=DEV).normal_()
    v_cache = torch.empty_like(k_cache).normal_()
    perm = (torch.randperm(num_blocks - 1, device=DEV) + 1).to(torch.int32)
    table = torch.zeros(len(lens), max(max(pages), 1), dtype=torch.int32, device=DEV)
    offset = 0
    for i, p in enumerate(pages):
        table[i, :p] = perm[offset : offset + p]
        offset += p
    starts = torch.tensor([0, *itertools.accumulate(new)], dtype=torch.int32, device=DEV)
    q = torch.randn(sum(new), hq, d, dtype=dtype, device=DEV)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=DEV)
    return (q, k_cache, v_cache, table, starts, seq_lens), max(new)


def check_attention(name: str, lens, new, tol: float, window=None, dtype=BF16, **kw) -> dict:
    """Triton vs reference on one batch."""
    args, mql = paged_batch(lens, new, dtype, **kw)
    scale = args[0].shape[-1] ** -0.5
    out = paged_attention_triton(*args, scale, window, max_query_len=mql, max_seq_len=max(lens))
    err = rel_err(out, paged_attention_ref(*args, scale, window))
    return {"check": name, "rel_err": err, "tol": tol, "ok": err < tol and bool(torch.isfinite(out).all())}


def check_graph_replay() -> dict:
    """Capture decode attention at short lengths, replay at long ones: the split count must follow."""
    lens = [16] * 8
    args, _ = paged_batch([4096] * 8, [1] * 8)
    seq_lens = args[5]
    seq_lens.fill_(16)
    op = lambda: kernels.paged_attention(*args, D**-0.5, None, max_query_len=1, max_seq_len=16)  # noqa: E731
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        op()  # compile outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = op()
    lens = [0, 1, 17, 300, 1024, 2049, 3333, 4096]
    seq_lens.copy_(torch.tensor(lens, dtype=torch.int32))
    graph.replay()
    err = rel_err(out, paged_attention_ref(*args[:5], seq_lens, D**-0.5))
    return {"check": "decode CUDA-graph replay, new lengths", "rel_err": err, "tol": 1e-2, "ok": err < 1e-2}


def small_ops(t: int, dtype=BF16):
    """(name, triton fn, reference fn, bytes moved) for the elementwise ops at T tokens."""
    x, res = torch.randn(t, HIDDEN, dtype=dtype, device=DEV), torch.randn(t, HIDDEN, dtype=dtype, device=DEV)
    w = torch.randn(HIDDEN, dtype=dtype, device=DEV)
    qkv = torch.randn(t, (HQ + 2 * HKV) * D, dtype=dtype, device=DEV)
    q, k, v = qkv.split([HQ * D, HKV * D, HKV * D], dim=-1)
    q, k, v = q.view(t, HQ, D), k.view(t, HKV, D), v.view(t, HKV, D)
    ang = torch.rand(t, D // 2, device=DEV) * 1000
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    gate_up = torch.randn(t, 2 * MLP, dtype=dtype, device=DEV)
    num_blocks = t // BS + 2
    kc = torch.zeros(num_blocks, BS, HKV, D, dtype=dtype, device=DEV)
    vc, kc2, vc2 = kc.clone(), kc.clone(), kc.clone()
    kc3, vc3, kc4, vc4 = (kc.clone() for _ in range(4))
    slots = torch.randperm(num_blocks * BS, device=DEV)[:t]
    slots[1::7] = -1  # padding tokens
    e = 1e-5
    b = dtype.itemsize
    return [
        ("rms_norm", lambda: kernels.rms_norm(x, w, e), lambda: rms_norm_ref(x, w, e), 2 * t * HIDDEN * b),
        ("fused_add_rms_norm", lambda: kernels.fused_add_rms_norm(x, res, w, e),
         lambda: fused_add_rms_norm_ref(x, res, w, e), 4 * t * HIDDEN * b),
        ("apply_rotary", lambda: kernels.apply_rotary(q, k, cos, sin), lambda: apply_rotary_ref(q, k, cos, sin),
         2 * t * (HQ + HKV) * D * b + 2 * t * D * 4),
        ("silu_and_mul", lambda: kernels.silu_and_mul(gate_up), lambda: silu_and_mul_ref(gate_up), 3 * t * MLP * b),
        ("write_kv_cache", lambda: (kernels.write_kv_cache(k, v, kc, vc, slots), (kc, vc))[1],
         lambda: (write_kv_cache_ref(k, v, kc2, vc2, slots), (kc2, vc2))[1], 4 * t * HKV * D * b),
        ("rotary_and_write_kv", lambda: (kernels.rotary_and_write_kv(q, k, v, cos, sin, kc3, vc3, slots), kc3, vc3),
         lambda: (rotary_and_write_kv_ref(q, k, v, cos, sin, kc4, vc4, slots), kc4, vc4),
         2 * t * HQ * D * b + 4 * t * HKV * D * b + 2 * t * D * 4),
    ]  # fmt: skip


def run_checks() -> list[dict]:
    """Parity at real shapes: decode (mixed lengths, padding, window, graphs), prefill/extend/mixed, fp32, small ops."""
    torch.manual_seed(0)
    lens = torch.randint(1, 8192, (16,)).tolist()
    lens[3] = 0  # a padding row
    out = [
        check_attention("decode bf16 B=16 lens<8k", lens, [1] * 16, 1e-2),
        check_attention("decode bf16 B=256 lens<2k", torch.randint(1, 2048, (256,)).tolist(), [1] * 256, 1e-2),
        check_attention("decode bf16 window 4096", [9000, 4097, 100, 4096], [1] * 4, 1e-2, window=4096),
        check_attention("decode fp16 MQA 32:1", [700, 33], [1, 1], 1e-2, dtype=torch.float16, hkv=1),
        check_attention(
            "prefill bf16 2048 + extend 512/3000 + decodes", [2048, 3512, 101, 101, 0], [2048, 512, 1, 1, 1], 1e-2
        ),  # fmt: skip
        check_attention("prefill bf16 window 1024", [3000, 1500], [3000, 700], 1e-2, window=1024),
        check_attention("decode fp32", [600, 1, 17, 256], [1] * 4, 1e-4, dtype=torch.float32),
        check_attention("prefill fp32", [300, 90, 5], [300, 40, 1], 1e-4, dtype=torch.float32),
        check_graph_replay(),
    ]
    for dtype in (BF16, torch.float32):
        for name, fast, ref, _ in small_ops(257, dtype):
            a, b = fast(), ref()
            a, b = (a, b) if isinstance(a, tuple) else ((a,), (b,))
            err = max(rel_err(x, y) for x, y in zip(a, b))
            exact = all(torch.equal(x, y) for x, y in zip(a, b))
            tol = 1e-2 if dtype == BF16 else 1e-4
            out.append({"check": f"{name} {str(dtype)[6:]} T=257", "rel_err": err, "tol": tol, "ok": err < tol,
                        "bit_exact": exact})  # fmt: skip
    for c in out:
        print(f"check {c['check']:<48} rel_err {c['rel_err']:.2e} (< {c['tol']:.0e}) {'ok' if c['ok'] else 'FAIL'}"
              + (f" bit-exact={c['bit_exact']}" if "bit_exact" in c else ""), flush=True)  # fmt: skip
    return out


def graph_ms(fns: list) -> float:
    """GPU time per call with no launch gaps: all fns captured in one CUDA graph, its replay timed."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for fn in fns:
            fn()  # compile and allocate outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in fns:
            fn()
    return bench_ms(graph.replay) / len(fns)


def copies_for(nbytes: float) -> int:
    """Input sets to rotate through in a graph so that one replay touches >= 256 MB (4x the L2)."""
    return max(1, min(32, math.ceil(256e6 / nbytes)))


def time_decode(batch: int, ctx: int, cfg: DecodeConfig | None = None, with_ref: bool = False) -> dict:
    """Decode attention, every row at `ctx` tokens: eager and graph us, GB/s (K+V of the batch + q/out) from graph."""
    nbytes = batch * ctx * HKV * D * 2 * 2 + 2 * batch * HQ * D * 2
    sets = [paged_batch([ctx] * batch, [1] * batch)[0] for _ in range(copies_for(nbytes))]
    fns = [lambda a=a: paged_attention_triton(*a, D**-0.5, max_query_len=1, decode_config=cfg) for a in sets]
    ms, g_ms = bench_ms(fns[0]), graph_ms(fns)
    ref_ms = bench_ms(lambda: paged_attention_ref(*sets[0], D**-0.5)) if with_ref else None
    return {"kernel": "decode_attention", "shape": f"B={batch} ctx={ctx}", "ms": ms, "graph_ms": g_ms,
            "ref_ms": ref_ms, "gbps": nbytes / g_ms / 1e6}  # fmt: skip


def time_prefill(prefix: int, new: int, cfg: PrefillConfig | None = None, with_ref: bool = True) -> dict:
    """Prefill (prefix 0) or extend attention of one request: us, TFLOP/s; torch SDPA on dense tensors beside it."""
    args, mql = paged_batch([prefix + new], [new])
    fn = lambda: paged_attention_triton(*args, D**-0.5, max_query_len=mql, prefill_config=cfg)  # noqa: E731
    flops = 4 * HQ * D * (new * prefix + new * (new + 1) / 2)
    ms, g_ms = bench_ms(fn), graph_ms([fn])
    row = {"kernel": "prefill_attention", "shape": f"prefix={prefix} new={new}", "ms": ms, "graph_ms": g_ms,
           "tflops": flops / g_ms / 1e9}  # fmt: skip
    if with_ref:
        q = args[0].transpose(0, 1)[None]
        kd = torch.randn(1, HKV, prefix + new, D, dtype=BF16, device=DEV)
        # SDPA needs a dense mask for an extend; a causal prefill is its fast path.
        mask = None if prefix == 0 else torch.ones(new, prefix + new, dtype=torch.bool, device=DEV).tril(prefix)
        sdpa = lambda: F.scaled_dot_product_attention(q, kd, kd, mask, is_causal=prefix == 0, enable_gqa=True)  # noqa: E731
        row.update(ref_ms=bench_ms(lambda: paged_attention_ref(*args, D**-0.5)), sdpa_ms=bench_ms(sdpa))
    return row


def run_timings() -> list[dict]:
    """Decode grid, prefill, small ops."""
    rows = []
    for batch, ctx in itertools.product((1, 16, 256), (1024, 8192, 32768)):
        rows.append(time_decode(batch, ctx, with_ref=batch * ctx <= 16 * 8192))
        print(rows[-1], flush=True)
    for prefix, new in ((0, 2048), (7680, 512)):
        rows.append(time_prefill(prefix, new))
        print(rows[-1], flush=True)
    for t in (1, 256, 8192):
        ops = [small_ops(t) for _ in range(copies_for(small_ops_bytes(t)))]
        for i, (name, fast, ref, nbytes) in enumerate(ops[0]):
            g_ms = graph_ms([o[i][1] for o in ops])
            rows.append({"kernel": name, "shape": f"T={t}", "ms": bench_ms(fast), "graph_ms": g_ms,
                         "ref_ms": bench_ms(ref), "gbps": nbytes / g_ms / 1e6})  # fmt: skip
    return rows


def small_ops_bytes(t: int) -> int:
    """Bytes of one set of small-op inputs (for the graph rotation count)."""
    return t * 2 * (3 * HIDDEN + 2 * (HQ + 2 * HKV) * D + 2 * MLP)


def run_sweep() -> list[dict]:
    """Decode tiles x block-id prefetch (graph time) from one batch to 256. Earlier sweeps: KERNELS_NOTES.md."""
    rows = []
    tiles = ((64, 4, 3), (64, 4, 2), (64, 4, 4), (64, 2, 3), (128, 4, 3), (32, 2, 3))
    for prefetch, (block_n, warps, stages) in itertools.product((False, True), tiles):
        cfg = DecodeConfig(block_n=block_n, num_warps=warps, num_stages=stages, prefetch_ids=prefetch)
        for batch, ctx in ((1, 8192), (1, 32768), (16, 8192), (256, 8192)):
            r = time_decode(batch, ctx, cfg)
            rows.append({**r, "cfg": f"prefetch={int(prefetch)} bn={block_n} w={warps} s={stages}"})
            us = r["graph_ms"] * 1e3
            print(f"sweep {rows[-1]['cfg']:<30} {r['shape']:<16} {r['gbps']:6.0f} GB/s  graph {us:7.1f} us", flush=True)
    return rows


def print_table(rows: list[dict]) -> None:
    """The short summary table, last in the output (GB/s and TFLOP/s from the graph time)."""
    head = (
        f"{'kernel':<19}{'shape':<20}{'eager us':>9}{'graph us':>9}{'ref us':>9}{'GB/s':>7}{'%copy':>6}{'TFLOP/s':>8}"
    )
    print("\n" + head)
    for r in rows:
        ref = f"{r['ref_ms'] * 1e3:9.1f}" if r.get("ref_ms") else f"{'-':>9}"
        gbps = r.get("gbps")
        tail = f"{gbps:7.0f}{100 * gbps / COPY_GBPS:5.0f}%" if gbps else f"{'-':>7}{'-':>6}"
        tflops = f"{r['tflops']:8.0f}" if r.get("tflops") else ""
        sdpa = f"  (torch sdpa {r['sdpa_ms'] * 1e3:.1f} us)" if r.get("sdpa_ms") else ""
        print(
            f"{r['kernel']:<19}{r['shape']:<20}{r['ms'] * 1e3:9.1f}{r['graph_ms'] * 1e3:9.1f}{ref}{tail}{tflops}{sdpa}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write all results to this path")
    parser.add_argument("--sweep", action="store_true", help="also sweep decode-attention configurations")
    parser.add_argument("--skip-checks", action="store_true")
    args = parser.parse_args()
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    result["checks"] = [] if args.skip_checks else run_checks()
    result["sweep"] = run_sweep() if args.sweep else []
    result["timings"] = run_timings()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    failed = [c["check"] for c in result["checks"] if not c["ok"]]
    print_table(result["timings"])
    print(
        f"checks: {len(result['checks']) - len(failed)}/{len(result['checks'])} ok"
        + (f"; FAILED {failed}" if failed else "")
    )


if __name__ == "__main__":
    main()
