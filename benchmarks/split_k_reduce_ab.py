"""Batch-1 decode with split-K partials summed inside each quantized GEMM (per-layer tile counters, one launch)
against a second reduce kernel per GEMM (no counters), Llama-3.1-8B shape, random weights quantized at load,
the two variants alternating on one GPU in one run:

    python benchmarks/split_k_reduce_ab.py [--schemes int4,fp8] [--rounds 2] [--out r.json]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.quant_suite import SCHEMES, engine_for  # noqa: E402
from forgellm.bench.latency import measure_latency  # noqa: E402


def decode_tok_s(scheme: str, fused: bool) -> float:
    """Batch-1 decode tok/s (128 in, 256 out, 3 timed iterations) of a fresh engine."""
    import torch

    changes, _ = SCHEMES[scheme]
    # Without counters the layers keep the two-kernel path (split_k_counters=None).
    patch = mock.patch("forgellm.kernels.triton_utils.split_k_counters", return_value=None)
    with contextlib.nullcontext() if fused else patch:
        engine, _ = engine_for(changes, max_num_seqs=8)
    result = measure_latency(engine, 1, 128, 256, 3, num_warmup=1, disable_tqdm=True)
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    return result.decode_tok_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--schemes", default="int4,fp8")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = []
    for scheme in args.schemes.split(","):
        for _ in range(args.rounds):
            for fused in (True, False):
                tok_s = decode_tok_s(scheme, fused)
                rows.append({"scheme": scheme, "in_kernel_sum": fused, "decode_b1_tok_s": round(tok_s, 1)})
                print(json.dumps(rows[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
