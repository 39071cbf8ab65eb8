"""Decode paged attention over a bf16 vs an fp8 (e4m3) KV cache on the GPU, at Llama-3.1-8B shapes.

    python benchmarks/fp8_kv_attention_bench.py [--batches 1 64 256] [--contexts 1024 4096]

Each row: the median GPU time of one decode attention call (every sequence at the given context)
replayed from a CUDA graph with triton.testing.do_bench (L2 flushed before every call), the K/V bytes
it streams per second, its speed-up over the bf16 cache, and its output's relative error against the
bf16 cache's. "fp8" is the default kernel (K/V tiles converted to q's bf16 for the dots); "fp8+f16dot"
is DecodeConfig.fp8_f16_dot (dots in fp16, fewer conversions), measured here to decide its default.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable

import torch
import triton.testing

from forgellm.kernels.kv_cache import FP8_KV_DTYPE, quantize_kv_ref
from forgellm.kernels.triton_attention import _default_decode_config, paged_attention_triton

HQ, HKV, D, BS = 32, 8, 128, 16  # Llama-3.1-8B, 16-token pages
DEV = torch.device("cuda")


def decode_batch(batch: int, context: int) -> tuple[torch.Tensor, ...]:
    """(q, k_cache, v_cache, block_tables, query_start_loc, seq_lens): one new token per sequence, pages shuffled."""
    pages = -(-context // BS)
    num_blocks = batch * pages + 1  # block 0 stays free, like the engine's padding target
    k_cache = torch.randn(num_blocks, BS, HKV, D, device=DEV, dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    tables = (torch.randperm(num_blocks - 1, device=DEV) + 1).to(torch.int32).view(batch, pages)
    starts = torch.arange(batch + 1, device=DEV, dtype=torch.int32)
    seq_lens = torch.full((batch,), context, device=DEV, dtype=torch.int32)
    q = torch.randn(batch, HQ, D, device=DEV, dtype=torch.bfloat16)
    return q, k_cache, v_cache, tables, starts, seq_lens


def graph_ms(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    """Median ms of fn replayed from a CUDA graph (as the engine runs decode), and fn's output."""
    fn()  # compile and warm up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return triton.testing.do_bench(graph.replay, warmup=25, rep=200, return_mode="median"), out


def bench(batch: int, context: int) -> None:
    q, k_cache, v_cache, tables, starts, seq_lens = decode_batch(batch, context)
    k_scale, v_scale = (c.float().abs().max().item() / 448 for c in (k_cache, v_cache))
    k8, v8 = quantize_kv_ref(k_cache, FP8_KV_DTYPE, k_scale), quantize_kv_ref(v_cache, FP8_KV_DTYPE, v_scale)
    default = _default_decode_config(batch, HKV)
    variants = {
        "bf16": (k_cache, v_cache, {}),
        "fp8": (k8, v8, dict(k_scale=k_scale, v_scale=v_scale)),
        "fp8+f16dot": (
            k8,
            v8,
            dict(k_scale=k_scale, v_scale=v_scale, decode_config=dataclasses.replace(default, fp8_f16_dot=True)),
        ),
    }
    base_ms = base_out = None
    for name, (kc, vc, extra) in variants.items():

        def call(kc=kc, vc=vc, extra=extra) -> torch.Tensor:
            return paged_attention_triton(q, kc, vc, tables, starts, seq_lens, D**-0.5, max_query_len=1, **extra)

        ms, out = graph_ms(call)
        kv_bytes = 2 * batch * context * HKV * D * kc.element_size()
        if base_out is None:
            base_ms, base_out = ms, out
        err = ((out.double() - base_out.double()).norm() / base_out.double().norm()).item()
        print(
            f"{batch:>5} {context:>7} {name:>11} {ms * 1e3:>9.1f} {kv_bytes / ms / 1e6:>8.0f} "
            f"{base_ms / ms:>7.2f} {err:>9.4f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096])
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()}: decode attention, {HQ} q heads, {HKV} KV heads, head_dim {D}, pages {BS}")
    print(f"{'batch':>5} {'context':>7} {'cache':>11} {'us':>9} {'GB/s':>8} {'speedup':>7} {'rel_err':>9}")
    for batch in args.batches:
        for context in args.contexts:
            bench(batch, context)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
