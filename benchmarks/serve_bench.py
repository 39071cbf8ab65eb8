"""Issue 4's GPU figures: `forgellm serve` against the offline engine on the same requests.

    python benchmarks/serve_bench.py [--no-record]                  # H200: Llama-3.1-8B shape, bf16, random weights
    python benchmarks/serve_bench.py --model-config tiny-llama --device cpu --dtype float32 --quick --no-record

The second line is the CPU smoke test. One engine is built and measured offline first (throughput
of N requests with max_num_seqs 64; per-token latency at batch 1), then served as `forgellm serve`
serves it (AsyncLLM + the app, uvicorn) and loaded by `forgellm bench serve` from another process:
the same request shapes at concurrency 64, then at concurrency 1. Targets: served throughput at c=64
>= 90% of offline (`serve_c64_vs_offline`), served per-token latency at c=1 within 5% of offline
(`serve_c1_itl_overhead`). Both go to benchmarks/results.jsonl with the raw figures.

Both engine placements are served in turn (`--placements`): `thread` (AsyncLLM stepping the
engine measured offline, in a thread of the server process) and `process` (ProcessAsyncLLM: the
engine is freed and a child process builds it again from the same config). The headline metrics
describe the first placement listed; every placement also gets its own `serve_<placement>_*` lines.

On the H200 the server needs wheels (fastapi, starlette, uvicorn, pydantic, pydantic-core,
annotated-types, typing-inspection, opentelemetry-api, typing-extensions, httptools): see the
device README; install them with --target /tmp/site and put /tmp/site on PYTHONPATH first.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import uvicorn  # noqa: E402

from forgellm.bench import engine_setup, report  # noqa: E402
from forgellm.bench.datasets import random_requests  # noqa: E402
from forgellm.bench.latency import measure_latency  # noqa: E402
from forgellm.bench.throughput import measure_throughput, warm_up  # noqa: E402
from forgellm.engine.async_engine import AsyncLLM  # noqa: E402
from forgellm.engine.process_engine import ProcessAsyncLLM  # noqa: E402
from forgellm.serve.app import build_app  # noqa: E402

CONCURRENCY = 64
# (requests, input len, output len) at concurrency 64, and (requests, input, output) at concurrency 1.
FULL = ((256, 256, 256), (4, 128, 256))
QUICK = ((16, 32, 16), (2, 16, 16))


def serve_load(engine: AsyncLLM, concurrency: int, shape: tuple[int, int, int], seed: int) -> dict:
    """Serve `engine` on a free local port; return `forgellm bench serve`'s JSON for one load."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(engine), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    num, input_len, output_len = shape
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "serve.json"
            options = (
                f"--base-url http://127.0.0.1:{port} --num-prompts {num} --max-concurrency {concurrency} "
                f"--input-len {input_len} --output-len {output_len} --num-warmups 2 --seed {seed} --output {out}"
            )
            subprocess.run([sys.executable, "-m", "forgellm", "bench", "serve", *shlex.split(options)], check=True)
            return json.loads(out.read_text())
    finally:
        server.should_exit = True
        thread.join()


def serve_both_loads(served: AsyncLLM, shapes: tuple) -> tuple[dict, dict]:
    """`forgellm bench serve` at concurrency 64, then at concurrency 1; shuts `served` down."""
    try:
        return serve_load(served, CONCURRENCY, shapes[0], seed=2), serve_load(served, 1, shapes[1], seed=3)
    finally:
        served.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    engine_setup.add_model_args(parser)
    parser.add_argument("--quick", action="store_true", help="small shapes (the CPU smoke test)")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/results.jsonl")
    parser.add_argument(
        "--placements", default="process,thread", help="engine placements to serve, headline first (process, thread)"
    )
    args = parser.parse_args()
    if args.model_config is None and getattr(args, "model", None) is None:
        args.model_config, args.random_weights = "llama-3.1-8b", True
    if not hasattr(args, "max_num_seqs"):
        args.max_num_seqs = CONCURRENCY  # offline runs at the concurrency the server gets
    placements = [p.strip() for p in args.placements.split(",") if p.strip()]
    if not placements or set(placements) - {"thread", "process"}:
        parser.error("--placements takes thread and/or process")
    config = engine_setup.engine_config_from_bench_args(args)
    shapes = QUICK if args.quick else FULL
    (num, in_len, out_len), (num1, in1, out1) = shapes
    engine = engine_setup.build_engine(config)
    facts = engine_setup.describe_engine(engine)
    requests = random_requests(num, in_len, out_len, engine_setup.vocab_size(engine), seed=1)
    warm_up(engine, requests, 4, args.temperature, seed=1)
    offline = measure_throughput(engine, requests, args.temperature, disable_tqdm=True)
    latency = measure_latency(engine, 1, in1, out1, num_iters=3, temperature=args.temperature, disable_tqdm=True)
    offline_itl_ms = latency.itl_s.mean * 1e3
    print(f"offline: {offline.output_tok_s:,.1f} output tok/s at c={CONCURRENCY}; {offline_itl_ms:.3f} ms/token at b=1")
    loads: dict[str, tuple[dict, dict]] = {}
    if "thread" in placements:  # the engine measured offline, stepped by AsyncLLM's thread
        served = AsyncLLM(engine=engine)
        loads["thread"] = serve_both_loads(served, shapes)
        served.engine = None  # type: ignore[assignment]  # the app outlives the load; the model must not
    if "process" in placements:  # the child builds its own engine: free this one's GPU memory first
        engine = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            print(f"before the engine process: {torch.cuda.memory_allocated() / 2**30:.2f} GiB still allocated here")
        loads["process"] = serve_both_loads(ProcessAsyncLLM(config=config), shapes)
    figures: dict[str, tuple[float, str]] = {}
    for placement in placements:
        c64, c1 = loads[placement]
        ratio, overhead = c64["output_tok_s"] / offline.output_tok_s, c1["itl_ms"]["mean"] / offline_itl_ms - 1.0
        if placement == placements[0]:
            figures["serve_c64_vs_offline"] = (ratio, "ratio")
            figures["serve_c1_itl_overhead"] = (overhead, "ratio")
        figures[f"serve_{placement}_c64_vs_offline"] = (ratio, "ratio")
        figures[f"serve_{placement}_c1_itl_overhead"] = (overhead, "ratio")
        figures[f"serve_{placement}_c64_out_tok_s"] = (c64["output_tok_s"], "tok/s")
        figures[f"serve_{placement}_c64_tpot_ms"] = (c64["tpot_ms"]["mean"], "ms")
        figures[f"serve_{placement}_c1_itl_ms"] = (c1["itl_ms"]["mean"], "ms")
        if c64["failed"] or c1["failed"]:
            first = (c64["errors"] or c1["errors"])[:1]
            print(f"{placement}: failed requests: {c64['failed']} at c=64, {c1['failed']} at c=1; first: {first}")
    figures["offline_c64_out_tok_s"] = (offline.output_tok_s, "tok/s")
    figures["offline_b1_itl_ms"] = (offline_itl_ms, "ms")
    print(report.format_header("forgellm serve vs offline", {**facts, "model": engine_setup.model_label(args, config)}))
    print(report.format_table(["metric", "value"], [[k, report.fmt(v, 4)] for k, (v, _) in figures.items()]))
    ok = figures["serve_c64_vs_offline"][0] >= 0.90 and figures["serve_c1_itl_overhead"][0] <= 0.05
    verdict = "PASS" if ok else "MISS"
    print(f"targets for {placements[0]} (c64 >= 90% of offline, c1 per-token latency within 5%): {verdict}")
    if not args.no_record:
        command = "python benchmarks/serve_bench.py " + " ".join(sys.argv[1:])
        common = dict(model=engine_setup.model_label(args, config), gpu=facts["device"], commit=report.git_commit(REPO))
        records = [report.make_record(k, v, unit, command=command, **common) for k, (v, unit) in figures.items()]
        report.append_results(REPO / "benchmarks" / "results.jsonl", records)
    out_dir = os.environ.get("OUT")
    if out_dir:  # on the device machine, what is written under $OUT comes back
        Path(out_dir, "serve_bench.json").write_text(json.dumps({k: v for k, (v, _) in figures.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
