"""Where a decode step's time goes: host phases vs the GPU's own time (the overlap decision).

    python benchmarks/profile_step.py --model-config llama-3.1-8b --batch-size 1 --steps 200

Prints per-phase host milliseconds of EngineCore.step (schedule, execute incl. the wait for the
sampled ids, update, detokenize/output) and the GPU time of one decode graph replay, measured
with CUDA events. Host overhead = step wall time - GPU time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from forgellm import LLM, SamplingParams
from forgellm.models.presets import preset_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-config", default="llama-3.1-8b")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument(
        "--trace", action="store_true", help="also print torch.profiler tables of a decode step and a prefill"
    )
    args = parser.parse_args()

    llm = LLM(
        str(preset_dir(args.model_config)),
        load_format="dummy",
        dtype="bfloat16",
        max_model_len=args.max_model_len,
        max_num_seqs=max(args.batch_size, 8),
        enforce_eager=args.enforce_eager,
        async_scheduling="off",  # the phases below are those of one synchronous step
    )
    engine, core = llm.engine, llm.engine.core
    params = SamplingParams(temperature=0.0, max_tokens=args.steps + 20, ignore_eos=True, detokenize=False)
    g = torch.Generator().manual_seed(0)
    for i in range(args.batch_size):
        prompt = torch.randint(0, core.runner.arch.vocab_size, (args.input_len,), generator=g).tolist()
        engine.add_request(str(i), prompt, params)
    for _ in range(10):  # prefill and warm-up
        engine.step()

    phases: dict[str, list[float]] = {k: [] for k in ("schedule", "execute", "update", "output", "step")}
    for _ in range(args.steps):
        t0 = time.perf_counter()
        sched = core.scheduler.schedule()
        t1 = time.perf_counter()
        result = core.runner.execute_model(sched)
        t2 = time.perf_counter()
        core.scheduler.update_from_output(sched, result.sampled_token_ids)
        t3 = time.perf_counter()
        engine.output_processor.process([])
        t4 = time.perf_counter()
        for key, value in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
            phases[key].append(value * 1e3)

    gpu_ms = float("nan")
    graphs = core.runner.graph_runner
    if graphs is not None:
        size = min(s for s in graphs.sizes if s >= args.batch_size)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(50):
            start.record()
            graphs.graphs["decode", size].replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        gpu_ms = statistics.median(times)

    print(
        f"\nbatch {args.batch_size}, prompt {args.input_len}, {args.steps} decode steps "
        f"({'eager' if graphs is None else 'CUDA graphs'})"
    )
    print(f"{'phase':<12}{'median ms':>12}")
    for key, values in phases.items():
        print(f"{key:<12}{statistics.median(values):>12.3f}")
    step = statistics.median(phases["step"])
    print(f"{'gpu (graph)':<12}{gpu_ms:>12.3f}")
    print(f"{'overhead':<12}{step - gpu_ms:>12.3f}   tok/s per request: {1e3 / step:.1f}")
    if args.trace:
        trace(engine, args.input_len)


def trace(engine, input_len: int) -> None:
    """Profiler tables: 3 decode steps, then one prefill of a fresh prompt (the TTFT path)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    with profile(activities=activities) as prof:
        for _ in range(3):
            engine.step()
        torch.cuda.synchronize()
    print("\n== 3 decode steps, by CUDA time")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=60))
    print("\n== 3 decode steps, by CPU time")
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15, max_name_column_width=60))
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True, detokenize=False)
    prompt = list(range(1000, 1000 + input_len))
    engine.add_request("trace-prefill", prompt, params)
    torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        engine.step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) * 1e3
    print(f"\n== one prefill step of {input_len} tokens: {wall:.2f} ms wall, by CPU time")
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=20, max_name_column_width=60))


if __name__ == "__main__":
    main()
