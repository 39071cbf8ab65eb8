"""Issue 10's quantized-inference targets on one GPU (Llama-3.1-8B shape, random weights quantized at
load, EOS ignored), each scheme on its own engine, in one run:

    python benchmarks/quant_suite.py [--only SCHEME[,SCHEME]] [--quick] [--no-record]

Schemes: bf16, fp8, int8, int4 (g128), nvfp4 (weight-only), nvfp4-fp8 (converted to FP8 at load),
fp8-kv (FP8 weights + FP8 KV cache: TTFT and throughput too), int4-8gb (INT4 under an 8 GB GPU memory
cap, 4 concurrent requests, max_model_len 4096, in a child process so the cap binds only there).
Every figure goes to benchmarks/results.jsonl; a table with targets is printed last.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from forgellm.bench import engine_setup, report  # noqa: E402
from forgellm.bench.datasets import random_requests  # noqa: E402
from forgellm.bench.latency import measure_latency  # noqa: E402
from forgellm.bench.throughput import measure_throughput, warm_up  # noqa: E402
from forgellm.config import EngineConfig  # noqa: E402
from forgellm.models.presets import preset_dir  # noqa: E402

# scheme -> (EngineConfig changes, decode metric)
SCHEMES: dict[str, tuple[dict, str]] = {
    "bf16": ({}, "decode_b1_tok_s"),
    "fp8": (dict(quantization="fp8"), "decode_b1_fp8_tok_s"),
    "int8": (dict(quantization="int8"), "decode_b1_int8wo_tok_s"),
    "int4": (dict(quantization="int4", quantization_group_size=128), "decode_b1_int4_tok_s"),
    "nvfp4": (dict(quantization="nvfp4", nvfp4_mode="weight_only"), "decode_b1_nvfp4_tok_s"),
    "nvfp4-fp8": (dict(quantization="nvfp4", nvfp4_mode="fp8"), "decode_b1_nvfp4_as_fp8_tok_s"),
    "fp8-kv": (dict(quantization="fp8", kv_cache_dtype="fp8"), "decode_b1_fp8_kvfp8_tok_s"),
}
TARGETS = {
    "decode_b1_tok_s": (235.0, True),
    "decode_b1_fp8_tok_s": (400.0, True),
    "decode_b1_int8wo_tok_s": (380.0, True),
    "decode_b1_int4_tok_s": (600.0, True),
    "decode_b1_nvfp4_tok_s": (550.0, True),
    "ttft_2048_fp8_ms": (35.0, False),
    "tput_128x128_fp8_out_tok_s": (24_000.0, True),
    "tput_1000x1000_fp8_out_tok_s": (17_744.0, True),
}
MODEL = "llama-3.1-8b"


def engine_for(changes: dict, max_model_len: int = 4096, **extra) -> object:
    config = EngineConfig(
        model=str(preset_dir(MODEL)),
        load_format="dummy",
        dtype="bfloat16",
        max_model_len=max_model_len,
        **changes,
        **extra,
    )
    return engine_setup.build_engine(config), config


def flags_of(changes: dict) -> str:
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in changes.items())


def run_scheme(name: str, args: argparse.Namespace, figures: list) -> None:
    import torch

    changes, metric = SCHEMES[name]
    t0 = time.perf_counter()
    engine, config = engine_for(changes, max_num_seqs=256)
    load_s = time.perf_counter() - t0
    info = engine.model_info
    print(f"== {name}: {info.quantization or 'bf16'}, weights {info.weight_gib:.2f} GiB, loaded in {load_s:.0f} s")
    iters = 2 if args.quick else 5
    result = measure_latency(engine, 1, 128, 256, iters, num_warmup=1, disable_tqdm=True)
    base = f"forgellm bench latency --model-config {MODEL} --random-weights --dtype bfloat16 {flags_of(changes)}"
    figures.append((metric, result.decode_tok_s, "tok/s", f"{base} --batch-size 1 --input-len 128 --output-len 256"))
    figures.append((f"weight_gib_{name}", info.weight_gib, "GiB", base))
    if name == "fp8-kv":
        ttft = measure_latency(engine, 1, 2048, 1, 3 if args.quick else 10, num_warmup=1, disable_tqdm=True)
        figures.append(("ttft_2048_fp8_ms", ttft.ttft_s.mean * 1e3, "ms", f"{base} --input-len 2048 --output-len 1"))
        for n_in, n_out, count in ((128, 128, 3000), (1000, 1000, 1000)):
            count = count // 4 if args.quick else count
            requests = random_requests(count, n_in, n_out, engine_setup.vocab_size(engine), seed=0)
            warm_up(engine, requests, 4, 1.0, 0)
            tput = measure_throughput(engine, requests, disable_tqdm=True, time_limit_s=args.tput_limit)
            metric_name = f"tput_{n_in}x{n_out}_fp8_out_tok_s"
            cmd = (
                f"{base.replace('latency', 'throughput')} --num-prompts {count} --input-len {n_in} --output-len {n_out}"
            )
            figures.append((metric_name + ("" if tput.complete else "_partial"), tput.output_tok_s, "tok/s", cmd))
    del engine
    gc.collect()
    torch.cuda.empty_cache()


def run_int4_8gb(figures: list) -> None:
    """INT4 8B under an 8 GB cap, 4 concurrent requests, context 4096, in a child process."""
    script = REPO / "benchmarks" / "int4_8gb.py"
    cmd = "python benchmarks/int4_8gb.py --kv-cache-dtype fp8"
    proc = subprocess.run(
        [sys.executable, str(script), "--kv-cache-dtype", "fp8"], capture_output=True, text=True, timeout=300
    )
    print(proc.stderr[-3000:])
    if proc.returncode != 0:
        figures.append(("int4_8gb_runs", 0.0, "bool", cmd))
        return
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    figures.append(("int4_8gb_runs", 1.0, "bool", cmd))
    figures.append(("int4_8gb_4req_out_tok_s", data["out_tok_s"], "tok/s", cmd))
    figures.append(("int4_8gb_peak_gib", data["peak_gib"], "GiB", cmd))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help=f"comma-separated: {', '.join([*SCHEMES, 'int4-8gb'])}")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tput-limit", type=float, default=120.0, help="seconds per throughput run")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(format="%(message)s")
    logging.getLogger("forgellm").setLevel(logging.INFO)
    only = [s for s in args.only.split(",") if s] or [*SCHEMES, "int4-8gb"]
    figures: list = []
    for name in only:
        try:
            run_int4_8gb(figures) if name == "int4-8gb" else run_scheme(name, args, figures)
        except Exception as exc:  # one scheme failing must not cost the others' figures
            import traceback

            traceback.print_exc()
            print(f"!! {name}: {type(exc).__name__}: {exc}")
    if not args.no_record:
        gpu, commit = engine_setup.device_name("cuda"), report.git_commit(REPO)
        records = [
            report.make_record(m, v, u, model=f"{MODEL} (random weights)", gpu=gpu, commit=commit, command=c)
            for m, v, u, c in figures
        ]
        report.append_results(REPO / "benchmarks" / "results.jsonl", records)
    rows = []
    for metric, value, unit, _ in figures:
        goal = TARGETS.get(metric)
        rows.append(
            [
                metric,
                report.fmt(value),
                unit,
                f"{'>=' if goal[1] else '<='} {goal[0]:g}" if goal else "",
                report.verdict(value, *goal) if goal else "",
            ]
        )
    print(report.format_table(["metric", "value", "unit", "target", "result"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
