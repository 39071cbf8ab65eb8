"""Issue 17's runs (tensor and data parallelism on several GPUs), one command each; they also run on one GPU
(the baselines: --tp 1, --dp 1) and on the CPU (a smoke test of the harness, with gloo).

    python benchmarks/parallel_gpu_runs.py decode-b1 --tp 1,2                                # x2, 8B
    python benchmarks/parallel_gpu_runs.py decode-b1 --tp 4 --model-config llama-3.3-70b     # x4, 70B
    python benchmarks/parallel_gpu_runs.py serve-dp --dp 1,2                                 # x2, 8B, c=128
    python benchmarks/parallel_gpu_runs.py kill-rank --tp 2                                  # x2
    python benchmarks/parallel_gpu_runs.py decode-b1 --tp 1,2 --model-config tiny-llama --device cpu \\
        --dtype float32 --quick                                                              # CPU smoke test

Every run builds its engines from the engine flags (random weights of `--model-config`, Llama-3.1-8B by default):
- `decode-b1`: batch-1 decode tokens/s (1 / mean inter-token latency; 128-token prompts, 256 new tokens, 3
  batches after a warm-up) for each tensor-parallel size, and the speed-up over the first (`decode_b1_tp2_speedup`).
- `serve-dp`: `forgellm serve`'s output tokens/s under `forgellm bench serve` at `--concurrency` (512 requests,
  256 in / 256 out) with each data-parallel size (`serve_dp2_vs_dp1`), replicas in their own processes.
- `kill-rank`: a TP engine decoding when one of its worker processes is killed: seconds until the request fails
  with EngineDeadError, and its message (the issue asks for an error within the collective timeout, no hang).
Prints one JSON line per figure, ready for benchmarks/results.jsonl (date, commit, command included).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO)
sys.path.insert(1, str(REPO / "benchmarks"))

from forgellm.bench import engine_setup, report  # noqa: E402
from forgellm.bench.latency import measure_latency  # noqa: E402
from forgellm.config import EngineConfig  # noqa: E402


def sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def figure(metric: str, value: float, unit: str, args: argparse.Namespace, **raw: object) -> dict:
    line = {"date": time.strftime("%Y-%m-%d"), "commit": report.git_commit(REPO), "metric": metric}
    line.update(value=round(value, 3), unit=unit, **raw, command="python " + " ".join(sys.argv))
    print(json.dumps(line), flush=True)
    return line


def decode_b1(config: EngineConfig, args: argparse.Namespace) -> None:
    """Batch-1 decode speed at each tensor-parallel size, and the speed-up over the first size."""
    input_len, output_len = (16, 16) if args.quick else (128, 256)
    speeds = {}
    for tp in sizes(args.tp):
        engine = engine_setup.build_engine(dataclasses.replace(config, tensor_parallel_size=tp))
        try:
            result = measure_latency(engine, 1, input_len, output_len, num_iters=3, disable_tqdm=True)
        finally:
            engine.shutdown()
        speeds[tp] = 1.0 / result.itl_s.mean
        figure(f"decode_b1_tp{tp}_tok_s", speeds[tp], "tok/s", args, itl_ms=round(result.itl_s.mean * 1e3, 3))
    first, *others = speeds
    for tp in others:
        figure(f"decode_b1_tp{tp}_speedup", speeds[tp] / speeds[first], "x", args, over=f"tp{first}")


def serve_dp(config: EngineConfig, args: argparse.Namespace) -> None:
    """Served output tokens/s at `--concurrency` with each data-parallel size, and the ratio to the first."""
    from serve_bench import serve_load

    from forgellm.engine.data_parallel import DataParallelEngine
    from forgellm.engine.process_engine import ProcessAsyncLLM

    shape = (32, 32, 16) if args.quick else (512, 256, 256)
    speeds = {}
    for dp in sizes(args.dp):
        own = dataclasses.replace(config, data_parallel_size=dp, max_num_seqs=max(config.max_num_seqs, 256))
        engine = DataParallelEngine.start(ProcessAsyncLLM, own) if dp > 1 else ProcessAsyncLLM(config=own)
        try:
            result = serve_load(engine, args.concurrency, shape, seed=5)
        finally:
            engine.shutdown()
        speeds[dp] = result["output_tok_s"]
        figure(f"serve_dp{dp}_c{args.concurrency}_out_tok_s", speeds[dp], "tok/s", args)
    first, *others = speeds
    for dp in others:
        figure(f"serve_dp{dp}_vs_dp{first}", speeds[dp] / speeds[first], "x", args, concurrency=args.concurrency)


def kill_rank(config: EngineConfig, args: argparse.Namespace) -> None:
    """Kill a worker of a decoding TP engine; time until the request fails, and what it says."""
    from forgellm.engine.llm_engine import LLMEngine
    from forgellm.errors import EngineDeadError

    tp = sizes(args.tp)[-1]
    engine = LLMEngine(dataclasses.replace(config, tensor_parallel_size=tp))
    params = engine_setup.bench_sampling_params(256 if args.quick else 4096, 1.0)
    engine.add_request("long", [5, 6, 7, 8], params)
    outcome: dict = {}

    def decode() -> None:
        try:
            while engine.has_unfinished_requests():
                engine.step()
            outcome["error"] = "finished without an error"
        except EngineDeadError as exc:
            outcome["error"], outcome["at"] = str(exc), time.monotonic()

    thread = threading.Thread(target=decode)
    thread.start()
    time.sleep(2.0)
    killed = time.monotonic()
    engine.executor.workers[-1].kill()
    thread.join(timeout=config.distributed_timeout_s + 60)
    engine.shutdown()
    seconds = outcome.get("at", float("inf")) - killed
    figure(f"tp{tp}_killed_rank_error_s", seconds, "s", args, message=outcome.get("error", "hung"))


RUNS = {"decode-b1": decode_b1, "serve-dp": serve_dp, "kill-rank": kill_rank}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", choices=sorted(RUNS))
    parser.add_argument("--tp", default="1,2", help="tensor-parallel sizes, first is the baseline")
    parser.add_argument("--dp", default="1,2", help="data-parallel sizes, first is the baseline")
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="small shapes (the CPU smoke test)")
    engine_setup.add_model_args(parser)
    args = parser.parse_args()
    if args.model_config is None and getattr(args, "model", None) is None:
        args.model_config, args.random_weights = "llama-3.1-8b", True
    RUNS[args.run](engine_setup.engine_config_from_bench_args(args), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
