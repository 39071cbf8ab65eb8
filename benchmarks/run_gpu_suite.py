"""The whole GPU suite in one run of under 9 minutes: kernel micro-benchmarks, greedy parity against the
CPU reference, and issue 3's end-to-end targets (Llama-3.1-8B shape, bf16, random weights, EOS ignored).

    python benchmarks/run_gpu_suite.py [--quick] [--only NAME[,NAME]] [--no-record]
    python benchmarks/run_gpu_suite.py --model-config tiny-llama --device cpu --dtype float32 --quick --no-record

The second line is the CPU smoke test of this script. Every figure is appended to
benchmarks/results.jsonl; a table with targets and PASS/MISS is printed last.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]  # forgellm, tests.fixtures, suite_kernels: no install

import suite_kernels  # noqa: E402

from forgellm.bench import engine_setup, report  # noqa: E402
from forgellm.bench.datasets import random_requests  # noqa: E402
from forgellm.bench.latency import measure_latency  # noqa: E402
from forgellm.bench.throughput import measure_throughput, warm_up  # noqa: E402
from forgellm.config import EngineConfig  # noqa: E402
from forgellm.models.presets import PRESETS, preset_dir  # noqa: E402

# metric -> (unit, goal, higher is better), from issue 3's target table.
TARGETS: dict[str, tuple[str, float, bool]] = {
    "decode_b1_tok_s": ("tok/s", 255.0, True),
    "ttft_2048_ms": ("ms", 60.0, False),
    "ttft_128_ms": ("ms", 12.0, False),
    "itl_b1_p99_over_p50": ("ratio", 1.10, False),
    "tput_1000x1000_out_tok_s": ("tok/s", 12_000.0, True),
    "tput_128x128_out_tok_s": ("tok/s", 20_000.0, True),
    "attn_decode_b256_8k_gbps": ("GB/s", 3_400.0, True),
    "parity_fp32_exact_frac": ("fraction", 1.0, True),
    "kernel_checks_pass_frac": ("fraction", 1.0, True),
}
# name -> (input len, output len, (iterations, quick iterations), metrics it yields)
LATENCY_STEPS = {
    "decode_b1": (128, 256, (5, 2), ("decode_b1_tok_s", "itl_b1_p99_over_p50", "decode_b1_e2e_tok_s")),
    "ttft_128": (128, 1, (20, 10), ("ttft_128_ms",)),
    "ttft_2048": (2048, 1, (10, 5), ("ttft_2048_ms",)),
}
# name -> (input len, output len, (requests, quick: requests per max_num_seqs), metric). Quick runs
# whole waves: equal lengths finish together, and a part-full last wave would halve the figure.
THROUGHPUT_STEPS = {
    "tput_128x128": (128, 128, (3000, 4), "tput_128x128_out_tok_s"),
    "tput_1000x1000": (1000, 1000, (1000, 1), "tput_1000x1000_out_tok_s"),
}
E2E_NAMES = {*LATENCY_STEPS, *THROUGHPUT_STEPS, *(m for s in LATENCY_STEPS.values() for m in s[3])}
E2E_NAMES |= {step[3] for step in THROUGHPUT_STEPS.values()}
PARITY_VARIANTS_QUICK = ("llama", "llama-gqa4-llama3", "qwen3", "mistral-swa")
RESERVE_S, MIN_STEP_S = 15.0, 10.0  # time kept back so the table is printed within the budget; shortest step


@dataclass
class Figure:
    """One measured value; `partial` ones (cut short by the time budget) are shown but not recorded."""

    metric: str
    value: float
    unit: str
    model: str
    command: str
    partial: bool = False


@dataclass
class Suite:
    """The run's options, clock and everything measured or skipped so far."""

    args: argparse.Namespace
    deadline: float
    figures: list[Figure] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (step, why it has no figure)

    def remaining(self) -> float:
        """Seconds left of the time budget."""
        return self.deadline - time.monotonic()

    def wants(self, *names: str) -> bool:
        """Whether --only selects any of `names` (everything runs without --only)."""
        return not self.args.only or any(name in self.args.only for name in names)


def run_kernels(suite: Suite, device: str) -> None:
    """Kernel micro-benchmarks (benchmarks/kernels.py, run in its own process) as figures."""
    if not device.startswith("cuda"):
        suite.notes.append(("kernels", f"skipped: the Triton kernels need a GPU, not {device}"))
        return
    timeout = min(suite.args.kernels_timeout, suite.remaining() - RESERVE_S)
    figures, command, note = suite_kernels.run_kernels(timeout)
    suite.figures.extend(Figure(metric, value, unit, "llama-3.1-8b shapes", command) for metric, value, unit in figures)
    if note:
        suite.notes.append(("kernels", note))


def run_parity(suite: Suite, device: str) -> None:
    """Greedy tokens on `device` (float32, bfloat16) against the CPU float32 reference, in its own process
    (a device fault there must not take the end-to-end figures with it)."""
    from tests.fixtures.make_tiny_models import VARIANTS

    variants = ",".join(PARITY_VARIANTS_QUICK if suite.args.quick else VARIANTS)
    command = f"python benchmarks/gpu_parity.py --device {device} --variants {variants}"
    timeout = min(suite.args.parity_timeout, suite.remaining() - RESERVE_S)
    print(f"== parity: {command} (timeout {timeout:.0f} s)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "parity.json"
        argv = [sys.executable, *shlex.split(command)[1:], "--json", str(out)]
        subprocess.run(argv, cwd=REPO, timeout=max(timeout, 1.0))  # exit 1 = a float32 mismatch, still measured
        data = json.loads(out.read_text(encoding="utf-8"))
    model = f"tiny fixtures ({variants.count(',') + 1} variants)"
    for name, value, unit in (
        ("parity_fp32_exact_frac", data["float32"]["exact"], "fraction"),
        ("parity_bf16_exact_frac", data["bfloat16"]["exact"], "fraction"),
        ("parity_bf16_prefix_tokens", data["bfloat16"]["prefix"], "tokens"),
    ):
        suite.figures.append(Figure(name, value, unit, model, command))


def engine_config(args: argparse.Namespace) -> EngineConfig:
    """The preset with random weights; the context is capped (the longest target needs 2049 tokens)."""
    from forgellm.hf.config import load_model_config

    path = preset_dir(args.model_config)
    max_len = min(args.max_model_len, load_model_config(path).max_position_embeddings)
    engine = dict(dtype=args.dtype, device=args.device, max_model_len=max_len, max_num_seqs=args.max_num_seqs)
    return EngineConfig(model=str(path), load_format="dummy", **engine)


def cli_command(kind: str, args: argparse.Namespace, config: EngineConfig, extra: str) -> str:
    """The `forgellm bench` command line that reproduces a figure."""
    engine = f"--dtype {config.dtype} --max-model-len {config.max_model_len} --max-num-seqs {config.max_num_seqs}"
    return f"forgellm bench {kind} --model-config {args.model_config} --random-weights {engine} {extra}"


def run_e2e(suite: Suite) -> None:
    """Every selected latency and throughput step, on one engine (loaded once: it is the slow part)."""
    if suite.remaining() - RESERVE_S < 3 * MIN_STEP_S:  # loading the model alone takes a while
        suite.notes.append(("e2e", "skipped: out of time budget"))
        return
    config = engine_config(suite.args)
    print(f"== end to end: loading {suite.args.model_config} ({config.dtype}, random weights)", flush=True)
    engine = engine_setup.build_engine(config)
    for name, (n_in, n_out, _, metrics) in LATENCY_STEPS.items():
        if suite.wants("e2e", name, *metrics) and fits(suite, engine, name, n_in, n_out):
            guarded(suite, name, partial(run_latency_step, suite, engine, config, name))
    for name, (n_in, n_out, _, metric) in THROUGHPUT_STEPS.items():
        if suite.wants("e2e", name, metric) and fits(suite, engine, name, n_in, n_out):
            guarded(suite, name, partial(run_throughput_step, suite, engine, config, name))


def run_latency_step(suite: Suite, engine: Any, config: EngineConfig, name: str) -> None:
    """Batch-1 latency: decode rate and its steadiness, or time to first token."""
    n_in, n_out, iters, metrics = LATENCY_STEPS[name]
    num_iters = iters[1] if suite.args.quick else iters[0]
    print(f"== {name}: batch 1, {n_in} in, {n_out} out, {num_iters} iterations", flush=True)
    result = measure_latency(engine, 1, n_in, n_out, num_iters, num_warmup=1, disable_tqdm=True)
    flags = f"--batch-size 1 --input-len {n_in} --output-len {n_out} --num-iters {num_iters} --num-iters-warmup 1"
    command = cli_command("latency", suite.args, config, flags)
    values = {
        "decode_b1_tok_s": (result.decode_tok_s, "tok/s"),
        "decode_b1_e2e_tok_s": (result.output_tok_s, "tok/s"),
        "itl_b1_p99_over_p50": (result.itl_p99_over_p50, "ratio"),
        "ttft_128_ms": (result.ttft_s.mean * 1e3, "ms"),
        "ttft_2048_ms": (result.ttft_s.mean * 1e3, "ms"),
    }
    model = suite.args.model_config
    suite.figures.extend(Figure(m, values[m][0], values[m][1], model, command) for m in metrics)


def run_throughput_step(suite: Suite, engine: Any, config: EngineConfig, name: str) -> None:
    """All requests queued at once; stops at the time budget (the figure is then marked partial)."""
    n_in, n_out, counts, metric = THROUGHPUT_STEPS[name]
    num = counts[1] * config.max_num_seqs if suite.args.quick else counts[0]
    limit = suite.remaining() - RESERVE_S
    print(f"== {name}: {num} requests, {n_in} in, {n_out} out (time limit {limit:.0f} s)", flush=True)
    requests = random_requests(num, n_in, n_out, engine_setup.vocab_size(engine), seed=config.seed)
    warm_up(engine, requests, 4, 1.0, config.seed)
    result = measure_throughput(engine, requests, disable_tqdm=True, time_limit_s=limit)
    flags = f"--num-prompts {num} --input-len {n_in} --output-len {n_out}"
    command = cli_command("throughput", suite.args, config, flags)
    model = suite.args.model_config
    suite.figures.append(Figure(metric, result.output_tok_s, "tok/s", model, command, not result.complete))
    if not result.complete:
        suite.notes.append((name, f"time budget hit: {result.num_finished}/{num} requests finished"))


def guarded(suite: Suite, name: str, step: Callable[[], None]) -> None:
    """Run one step; an exception is printed and noted so the other steps still run."""
    try:
        step()
    except Exception as exc:  # one broken step must not cost the figures of the others
        traceback.print_exc()
        suite.notes.append((name, f"error: {type(exc).__name__}: {exc}"))


def fits(suite: Suite, engine: Any, name: str, n_in: int, n_out: int) -> bool:
    """Whether a step fits the model's context and the time left; notes why not."""
    if n_in + n_out > engine.max_model_len:
        suite.notes.append((name, f"skipped: {n_in}+{n_out} tokens exceed max_model_len {engine.max_model_len}"))
        return False
    if suite.remaining() - RESERVE_S < MIN_STEP_S:
        suite.notes.append((name, "skipped: out of time budget"))
        return False
    return True


def verdict(figure: Figure) -> tuple[str, str]:
    """(target text, PASS / MISS with how far off / '')."""
    if figure.metric not in TARGETS:
        return "", ""
    _, goal, higher = TARGETS[figure.metric]
    target = f"{'>=' if higher else '<='} {report.fmt(goal)}"
    if figure.partial:
        return target, "INCOMPLETE"
    return target, report.verdict(figure.value, goal, higher)


def print_table(suite: Suite) -> None:
    """The short summary printed last."""
    rows = [[f.metric, report.fmt(f.value), f.unit, *verdict(f)] for f in suite.figures]
    print()
    print(report.format_table(["metric", "value", "unit", "target", "result"], rows))
    for step, why in suite.notes:
        print(f"  {step}: {why}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; --only takes step names, metric names or groups (kernels, parity, e2e)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests and iterations")
    parser.add_argument("--only", default="", help="comma-separated steps, metrics or groups to run")
    parser.add_argument("--model-config", default="llama-3.1-8b", choices=PRESETS)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu (cpu: smoke test of the script)")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--time-budget", type=float, default=510.0, help="seconds for the whole run (default 510)")
    parser.add_argument("--kernels-timeout", type=float, default=180.0)
    parser.add_argument("--parity-timeout", type=float, default=150.0)
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results.jsonl"))
    parser.add_argument("--no-record", action="store_true", help="do not append to the results file")
    parser.add_argument("--commit", default=None, help="commit to record (default: git, $FORGELLM_COMMIT)")
    args = parser.parse_args(argv)
    known = {"kernels", "parity", "e2e", *E2E_NAMES}
    args.only = {name.strip() for name in args.only.split(",") if name.strip()}
    if args.only - known:
        parser.error(f"unknown --only name(s) {sorted(args.only - known)}; known: {', '.join(sorted(known))}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the selected steps (a failing step is reported, the others still run), record, print the table."""
    args = parse_args(argv)
    logging.basicConfig(format="%(message)s")
    logging.getLogger("forgellm").setLevel(logging.INFO)  # the engine's KV-cache size and start-up steps
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = engine_setup.device_name(device)
    suite = Suite(args, deadline=time.monotonic() + args.time_budget)
    steps = (
        ("kernels", partial(run_kernels, suite, device)),
        ("parity", partial(run_parity, suite, device)),
        ("e2e", partial(run_e2e, suite)),
    )
    for name, step in steps:
        if suite.wants(name, *(E2E_NAMES if name == "e2e" else ())):
            guarded(suite, name, step)
    if not args.no_record:
        commit = args.commit or report.git_commit(REPO)
        records = [
            report.make_record(f.metric, f.value, f.unit, model=f.model, gpu=gpu, commit=commit, command=f.command)
            for f in suite.figures
            if not f.partial
        ]
        print(f"appended {report.append_results(args.results, records)} records to {args.results}")
    print_table(suite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
