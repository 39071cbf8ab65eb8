"""Thread or process for the server's engine loop? Serve one engine both ways under the same load.

The model forward is replaced by an emulated GPU: each step sleeps (releasing the GIL, as a CUDA
sync does) for an H200-like time, 3.6 ms + 23 us per scheduled token (Llama-3.1-8B bf16: weights
read once per step, ~23 us of compute per prompt token). Everything on the host is real: scheduler,
KV-cache manager, detokenizer, stop strings, the HTTP server, SSE. So the comparison isolates what
the placement changes: GIL contention (thread) against pickling and pipe transfer (process).

    PYTHONPATH=. python benchmarks/serve_placement.py [--num-requests 256] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import uvicorn

from benchmarks.process_engine import ProcessAsyncLLM
from forgellm.bench.datasets import random_requests
from forgellm.config import EngineConfig
from forgellm.engine.async_engine import AsyncLLM
from forgellm.engine.in_flight import InFlightStep
from forgellm.engine.llm_engine import LLMEngine
from forgellm.engine.model_runner import ModelRunnerOutput
from forgellm.sampling_params import SamplingParams
from forgellm.serve.app import build_app


@dataclass(frozen=True)
class EmulatedDevice:
    """Replaces an engine's model forward by a sleep of base + per_token * scheduled tokens."""

    base_s: float = 0.0036
    per_token_s: float = 0.000023

    def __call__(self, engine: LLMEngine) -> None:
        runner = engine.core.runner
        busy_until = [0.0]  # when the emulated device finishes the steps queued so far

        def launch(scheduler_output, in_flight=None):  # noqa: ANN001, ANN202 - the runner's signature
            runner.release(scheduler_output.finished_request_ids)
            start = max(time.perf_counter(), busy_until[0])
            busy_until[0] = start + self.base_s + self.per_token_s * scheduler_output.num_batched_tokens
            samplers = [s.request for s in scheduler_output.scheduled if s.samples]
            step = InFlightStep(scheduler_output, samplers)
            # varied ids, so the detokenizer does real work
            ids = [3 + ((r.num_tokens + r.num_pending_tokens) * 7919) % 4000 for r in samplers]
            step.sampled_host = torch.tensor(ids, dtype=torch.int64)
            step.ready_at = busy_until[0]
            return step

        def collect(step):  # noqa: ANN001, ANN202 - the runner's signature
            time.sleep(max(0.0, step.ready_at - time.perf_counter()))
            out = ModelRunnerOutput()
            for request, token in zip(step.sample_requests, step.sampled_host.tolist()):
                out.sampled_token_ids[request.request_id] = token
            return out

        runner.launch, runner.collect = launch, collect


def offline(
    config: EngineConfig, device: EmulatedDevice, prompts: list[list[int]], output_len: int, one_at_a_time: bool
):
    """Output tokens/s and mean time per output token of LLMEngine stepping alone."""
    engine = LLMEngine(config)
    device(engine)
    params = SamplingParams(max_tokens=output_len, ignore_eos=True, temperature=0)
    groups = [[p] for p in prompts] if one_at_a_time else [prompts]
    start, tpots, tokens = time.perf_counter(), [], 0
    for group in groups:
        for i, prompt in enumerate(group):
            engine.add_request(f"{len(tpots)}-{i}", prompt, params)
        while engine.has_unfinished_requests():
            for out in engine.step():
                m = out.metrics
                tokens += len(out.outputs[0].token_ids)
                tpots.append((m.last_token_time - m.first_token_time) / (len(out.outputs[0].token_ids) - 1))
    elapsed = time.perf_counter() - start
    return {"output_tok_s": tokens / elapsed, "tpot_ms": 1000 * sum(tpots) / len(tpots)}


def serve_and_load(engine, num_requests: int, concurrency: int, input_len: int, output_len: int) -> dict:
    """Serve `engine` from a thread here; run `forgellm bench serve` as another process against it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(engine), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "serve.json"
        command = [
            sys.executable,
            "-m",
            "forgellm",
            "bench",
            "serve",
            "--base-url",
            f"http://127.0.0.1:{port}",
            "--num-prompts",
            str(num_requests),
            "--max-concurrency",
            str(concurrency),
            "--input-len",
            str(input_len),
            "--output-len",
            str(output_len),
            "--num-warmups",
            "2",
            "--output",
            str(out),
        ]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        result = json.loads(out.read_text())
    server.should_exit = True
    thread.join()
    return {
        "output_tok_s": result["output_tok_s"],
        "tpot_ms": result["tpot_ms"]["mean"],
        "itl_p99_ms": result["itl_ms"]["p99"],
        "failed": result["failed"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-requests", type=int, default=256)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the median is reported")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    config = EngineConfig(dtype="float32", max_num_seqs=args.concurrency, cpu_kv_cache_gb=0.5)
    device = EmulatedDevice()
    prompts = [r.prompt_token_ids for r in random_requests(args.num_requests, args.input_len, 1, 4000, seed=1)]
    modes = ("thread", "thread, switch interval 0.5 ms", "process")
    engines = {m: ProcessAsyncLLM(config, device) if m == "process" else AsyncLLM(config=config) for m in modes}
    for mode, engine in engines.items():
        if mode != "process":
            device(engine.engine)
    loads = ((args.concurrency, args.num_requests), (1, 8))
    samples: dict[tuple[str, int], list[dict]] = {}
    for _ in range(args.rounds):  # interleaved, so a busy spell on the machine hits every mode alike
        samples.setdefault(("offline", args.concurrency), []).append(
            offline(config, device, prompts, args.output_len, one_at_a_time=False)
        )
        samples.setdefault(("offline", 1), []).append(offline(config, device, prompts[:8], args.output_len, True))
        for mode, engine in engines.items():
            sys.setswitchinterval(0.0005 if "0.5 ms" in mode else 0.005)
            for concurrency, count in loads:
                row = serve_and_load(engine, count, concurrency, args.input_len, args.output_len)
                samples.setdefault((mode, concurrency), []).append(row)
        sys.setswitchinterval(0.005)
    for engine in engines.values():
        engine.shutdown()
    rows = {key: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for key, runs in samples.items()}
    print(f"{'mode':32} {'c':>3} {'out tok/s':>10} {'vs offline':>10} {'TPOT ms':>8} {'vs offline':>10}")
    for (mode, c), row in sorted(rows.items(), key=lambda item: (-item[0][1], item[0][0] != "offline")):
        base = rows[("offline", c)]
        print(
            f"{mode:32} {c:3d} {row['output_tok_s']:10.1f} {row['output_tok_s'] / base['output_tok_s']:10.1%} "
            f"{row['tpot_ms']:8.2f} {row['tpot_ms'] / base['tpot_ms'] - 1:+10.1%}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({f"{m} c={c}": r for (m, c), r in samples.items()}, indent=2))


if __name__ == "__main__":
    main()
