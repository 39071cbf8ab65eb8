"""How the gpu marker selects (runs on the CPU, in every default run): the default run deselects the GPU
tests, `-m gpu` selects exactly them, and without CUDA they fail with the reason instead of skipping."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GPU_DIR = "tests/gpu"


def pytest_in_subprocess(*args: str, hide_gpus: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if hide_gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""  # so a GPU machine behaves like CI's CPU-only one
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def collected(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stdout.splitlines() if "::" in line]


def test_default_run_deselects_every_gpu_test_and_gpu_selects_exactly_them() -> None:
    default = pytest_in_subprocess(GPU_DIR, "--collect-only", "-q")
    selected = pytest_in_subprocess(GPU_DIR, "--collect-only", "-q", "-m", "gpu")
    assert selected.returncode == 0, selected.stdout + selected.stderr
    gpu_tests = collected(selected)
    assert len(gpu_tests) >= 20 and not any("test_gpu_marker.py" in t for t in gpu_tests)
    # The default run keeps only this file's CPU tests; the rest are deselected, not skipped.
    assert all("test_gpu_marker.py" in t for t in collected(default)), default.stdout
    deselected = re.search(r"(\d+) deselected", default.stdout)
    assert deselected and int(deselected.group(1)) == len(gpu_tests), default.stdout


def test_gpu_tests_fail_without_cuda_and_say_why() -> None:
    test = f"{GPU_DIR}/test_gpu_kernels.py::test_dispatch_sends_cuda_tensors_to_triton"
    result = pytest_in_subprocess(test, "-m", "gpu", "-rA", hide_gpus=True)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "torch.cuda.is_available() is False" in output and "python -m pytest -m gpu" in output
    assert "skipped" not in output and "1 error" in output
