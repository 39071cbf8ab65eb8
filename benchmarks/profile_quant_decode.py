"""GPU time per kernel of one batch-1 decode step (Llama-3.1-8B shape, random weights, eager so the
profiler sees every launch), for a quantization scheme: what a quantized step spends its time on.

    python benchmarks/profile_quant_decode.py [--quantization int4] [--steps 20] [--top 12]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forgellm import LLM, SamplingParams  # noqa: E402
from forgellm.models.presets import preset_dir  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quantization", default=None)
    parser.add_argument("--kv-cache-dtype", default="auto")
    parser.add_argument("--steps", type=int, default=20, help="decode steps (0: profile the prefill alone)")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    llm = LLM(
        str(preset_dir("llama-3.1-8b")),
        load_format="dummy",
        dtype="bfloat16",
        max_model_len=4096,
        max_num_seqs=8,
        enforce_eager=True,
        quantization=args.quantization,
        kv_cache_dtype=args.kv_cache_dtype,
    )
    prompt = [100 + i % 5000 for i in range(args.input_len)]
    llm.generate([prompt], SamplingParams(max_tokens=8, ignore_eos=True), use_tqdm=False)  # warm-up
    params = SamplingParams(max_tokens=args.steps + 1, ignore_eos=True)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        llm.generate([prompt], params, use_tqdm=False)
    times: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for event in prof.key_averages():
        if event.device_type == torch.autograd.DeviceType.CUDA or getattr(event, "self_device_time_total", 0):
            times[event.key] += event.self_device_time_total
            counts[event.key] += event.count
    total = sum(times.values())
    steps = args.steps + 1  # the prefill step is in the total too: small next to it at 128 tokens
    print(f"scheme {args.quantization or 'bf16'}: GPU time per step ~{total / steps / 1e3:.3f} ms over {steps} steps")
    for name, us in sorted(times.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {us / steps / 1e3:7.3f} ms  {counts[name] // steps:4d}/step  {name[:90]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
