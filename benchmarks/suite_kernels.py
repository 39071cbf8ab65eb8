"""The kernel step of the GPU suite: run benchmarks/kernels.py --json and name its figures for results.jsonl.

kernels.py writes {"checks": [{"check", "ok", ...}], "timings": [{"kernel", "shape", "ms", "gbps" or
"tflops"}, ...]}; decode attention at batch B and context C becomes `attn_decode_b{B}_{C/1024}k_gbps`.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path("benchmarks") / "kernels.py"

# (metric, value, unit)
KernelFigure = tuple[str, float, str]


def shape_fields(shape: str) -> dict[str, int]:
    """'B=256 ctx=8192' -> {'B': 256, 'ctx': 8192} (fields that are not integers are dropped)."""
    fields = {}
    for part in shape.split():
        key, _, value = part.partition("=")
        if value.lstrip("-").isdigit():
            fields[key] = int(value)
    return fields


def metric_name(row: dict) -> str:
    """A stable metric name for one timing row (the issue's name for decode attention)."""
    fields = shape_fields(str(row.get("shape", "")))
    kernel = str(row.get("kernel", "kernel"))
    if kernel == "decode_attention" and {"B", "ctx"} <= fields.keys():
        return f"attn_decode_b{fields['B']}_{fields['ctx'] // 1024}k"
    if kernel == "prefill_attention":
        kernel = "attn_prefill"
    return "_".join([kernel, *(f"{key.lower()}{value}" for key, value in fields.items())])


def kernel_figures(data: dict) -> list[KernelFigure]:
    """GB/s or TFLOP/s of every timing row, and the fraction of parity checks that passed."""
    figures = []
    for row in data.get("timings", []):
        if row.get("error"):
            continue
        if row.get("gbps"):
            figures.append((metric_name(row) + "_gbps", float(row["gbps"]), "GB/s"))
        elif row.get("tflops"):
            figures.append((metric_name(row) + "_tflops", float(row["tflops"]), "TFLOP/s"))
    checks = data.get("checks", [])
    if checks:
        figures.append(("kernel_checks_pass_frac", sum(bool(c.get("ok")) for c in checks) / len(checks), "fraction"))
    return figures


def run_kernels(timeout_s: float) -> tuple[list[KernelFigure], str, str | None]:
    """(figures, the command, a note on what went wrong or None); no figures when the script is absent."""
    if not (REPO / SCRIPT).is_file():
        return [], "", f"skipped: {SCRIPT} does not exist"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "kernels.json"
        argv = [sys.executable, str(SCRIPT), "--json", str(out)]
        command = shlex.join(["python", str(SCRIPT), "--json", "kernels.json"])
        print(f"== kernels: {command} (timeout {timeout_s:.0f} s)", flush=True)
        try:
            done = subprocess.run(argv, cwd=REPO, timeout=max(timeout_s, 1.0))  # its output streams through
        except subprocess.TimeoutExpired:
            return [], command, f"timed out after {timeout_s:.0f} s"
        note = f"exit code {done.returncode}" if done.returncode else None
        if not out.is_file():
            return [], command, note or "kernels.py wrote no JSON"
        return kernel_figures(json.loads(out.read_text(encoding="utf-8"))), command, note
