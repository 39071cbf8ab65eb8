"""The GPU suite's pure parts, on the CPU: option parsing, kernel-figure naming, verdicts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import run_gpu_suite  # noqa: E402
import suite_kernels  # noqa: E402


def test_only_accepts_groups_steps_and_metrics() -> None:
    args = run_gpu_suite.parse_args(["--only", "parity, decode_b1,ttft_2048_ms", "--quick"])
    assert args.only == {"parity", "decode_b1", "ttft_2048_ms"} and args.quick
    assert run_gpu_suite.parse_args([]).only == set()
    with pytest.raises(SystemExit):
        run_gpu_suite.parse_args(["--only", "nonsense"])


def test_every_issue_metric_is_produced_by_a_step() -> None:
    produced = run_gpu_suite.E2E_NAMES | {
        "attn_decode_b256_8k_gbps",
        "parity_fp32_exact_frac",
        "kernel_checks_pass_frac",
    }
    assert set(run_gpu_suite.TARGETS) <= produced


def test_kernel_figures_names() -> None:
    data = {
        "checks": [{"check": "a", "ok": True}, {"check": "b", "ok": False}],
        "timings": [
            {"kernel": "decode_attention", "shape": "B=256 ctx=8192", "ms": 1.0, "gbps": 3500.0},
            {"kernel": "prefill_attention", "shape": "prefix=0 new=2048", "ms": 1.0, "tflops": 400.0},
            {"kernel": "rms_norm", "shape": "T=256", "ms": 0.01, "gbps": 900.0},
            {"shape": "B=16 ctx=8192", "error": "OutOfResources", "gbps": 0.0},
        ],
    }
    assert suite_kernels.kernel_figures(data) == [
        ("attn_decode_b256_8k_gbps", 3500.0, "GB/s"),
        ("attn_prefill_prefix0_new2048_tflops", 400.0, "TFLOP/s"),
        ("rms_norm_t256_gbps", 900.0, "GB/s"),
        ("kernel_checks_pass_frac", 0.5, "fraction"),
    ]


def test_verdict_of_partial_and_untargeted_figures() -> None:
    figure = run_gpu_suite.Figure("decode_b1_tok_s", 300.0, "tok/s", "m", "c")
    assert run_gpu_suite.verdict(figure) == (">= 255.00", "PASS")
    figure.partial = True
    assert run_gpu_suite.verdict(figure)[1] == "INCOMPLETE"
    assert run_gpu_suite.verdict(run_gpu_suite.Figure("other", 1.0, "x", "m", "c")) == ("", "")
