"""Where the time of real engine steps goes: GPU busy fraction, kernel classes, host wait.

Runs the engine as `forgellm bench` does (asynchronous scheduling as configured), profiles a window
of steps with torch.profiler and prints, per step: wall time, GPU busy time (union of kernel
intervals), the host's wait for results (0 means the host, not the GPU, sets the pace), and the
kernel time by class. Several scenarios run in one call, each on its own engine.

    python benchmarks/profile_engine.py                       # b1 decode, b256 decode, b256 mixed prefill
    python benchmarks/profile_engine.py --scenarios decode_b1 --async-scheduling off
    python benchmarks/profile_engine.py --scenarios decode_b512 --cprofile   # host Python hotspots
    python benchmarks/profile_engine.py --model-config tiny-llama --device cpu --dtype float32  # smoke test
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections import defaultdict

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from forgellm.bench.datasets import random_requests
from forgellm.bench.engine_setup import bench_sampling_params, build_engine
from forgellm.config import EngineConfig
from forgellm.models.presets import preset_dir

# name -> (requests, input len, output len, steps before the window, steps in the window)
SCENARIOS = {
    "decode_b1": (1, 128, 400, 40, 50),
    "decode_b64": (64, 512, 400, 60, 30),
    "decode_b256": (256, 128, 400, 60, 30),
    "prefill_mixed_b256": (256, 1000, 400, 0, 40),  # the first steps: 8k-token prefill chunks + decodes
    "decode_b256_ctx1500": (256, 1000, 1000, 540, 20),  # mid-way through tput_1000x1000's first wave
    "decode_b512": (512, 128, 400, 60, 30),  # tput_128x128's decode phase at --max-num-seqs 512
    "prefill_128_b512": (512, 128, 400, 0, 12),  # its prefill phase: 8k-token steps of 64 prompts each
    "waves_128_b512": (1024, 128, 128, 125, 30),  # the turn between two waves: mixed steps and decodes
}
CLASSES = (
    ("gemm", ("gemm", "cutlass", "nvjet", "sm90_", "cublas", "splitk")),
    ("attention", ("attention", "attn", "decode", "prefill", "flash")),
    ("sampling", ("sort", "topk", "softmax", "argmax", "exponential", "reduce_kernel", "cumsum", "scatter")),
)


def classify(name: str) -> str:
    lowered = name.lower()
    for label, keys in CLASSES:
        if any(key in lowered for key in keys):
            return label
    return "other"


def union_us(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by the intervals (overlapping kernels count once)."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def profile_scenario(args: argparse.Namespace, name: str) -> dict[str, float]:
    num, n_in, n_out, skip, window = SCENARIOS[name]
    config = EngineConfig(
        model=str(preset_dir(args.model_config)),
        load_format="dummy",
        dtype=args.dtype,
        device=args.device,
        max_model_len=n_in + n_out + 8,
        max_num_seqs=max(num, 8),
        async_scheduling=args.async_scheduling,
    )
    engine = build_engine(config)
    runner = engine.core.runner
    waits: list[float] = []
    collect = runner.collect

    def timed_collect(step):  # noqa: ANN001, ANN202 - the runner's signature
        start = time.perf_counter()
        if step.done is not None:
            step.done.synchronize()
        waits.append(time.perf_counter() - start)
        return collect(step)

    runner.collect = timed_collect
    params = bench_sampling_params(n_out, args.temperature)
    for index, request in enumerate(random_requests(num, n_in, n_out, engine.arch.vocab_size, seed=0)):
        engine.add_request(str(index), request.prompt_token_ids, params)
    for _ in range(skip):
        engine.step()
    sync = torch.cuda.synchronize if runner.device.type == "cuda" else (lambda: None)
    sync()
    waits.clear()
    if args.cprofile:  # host hotspots, without torch.profiler's per-op overhead
        return host_profile(engine, window, waits, sync, args.top)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if runner.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(window):
            engine.step()
        sync()
        wall_ms = (time.perf_counter() - start) * 1e3 / window
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    busy_ms = union_us([(e.time_range.start, e.time_range.end) for e in kernels]) / 1e3 / window
    by_class: dict[str, float] = defaultdict(float)
    by_name: dict[str, float] = defaultdict(float)
    for e in kernels:
        by_class[classify(e.name)] += e.time_range.elapsed_us() / 1e3 / window
        by_name[e.name] += e.time_range.elapsed_us() / 1e3 / window
    print(f"\n== {name}: {num} requests, {n_in} in, {n_out} out; steps {skip}..{skip + window}")
    for kernel, ms in sorted(by_name.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {ms:8.3f} ms/step  {kernel[:110]}")
    host_wait_ms = 1e3 * sum(waits) / window
    row = {"wall": wall_ms, "gpu_busy": busy_ms, "host_wait": host_wait_ms, "kernels": len(kernels) / window}
    row |= {label: by_class.get(label, 0.0) for label, _ in CLASSES} | {"other": by_class.get("other", 0.0)}
    del engine, runner
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return row


def host_profile(engine, window: int, waits: list[float], sync, top: int) -> dict[str, float]:  # noqa: ANN001
    """Wall and host-wait per step without any profiler, then the functions with the most own time
    over as many steps again under cProfile (which slows the host, so only its ranking counts)."""
    start = time.perf_counter()
    for _ in range(window):
        engine.step()
    sync()
    row = {"wall": (time.perf_counter() - start) * 1e3 / window, "host_wait": 1e3 * sum(waits) / window}
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(window):
        engine.step()
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-config", default="llama-3.1-8b")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {list(SCENARIOS)}")
    parser.add_argument("--async-scheduling", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top", type=int, default=12, help="kernels (or functions) listed per scenario")
    parser.add_argument("--cprofile", action="store_true", help="profile the host's Python (cProfile), not the GPU")
    args = parser.parse_args()
    rows = {name: profile_scenario(args, name) for name in args.scenarios.split(",")}
    columns = list(next(iter(rows.values())))
    print(f"\n{'ms per step':20}" + "".join(f"{c:>11}" for c in columns))
    for name, row in rows.items():
        print(f"{name:20}" + "".join(f"{row[c]:11.3f}" for c in columns))


if __name__ == "__main__":
    main()
