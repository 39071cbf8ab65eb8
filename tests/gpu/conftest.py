"""GPU tests: what CI (CPU only) cannot run. `python -m pytest -m gpu` runs them, on a machine with CUDA.

The default run deselects them (pyproject.toml: addopts = -m "not gpu"), so CI neither runs nor
skips them. Selected on a machine that cannot run them, every one of them fails at set-up with the
reason, before any model is built: a GPU test that skips would look like a pass.

Engines are expensive to build (CUDA-graph capture, warm-up), so the tests share them through the
session-scoped `engines` fixture, keyed by model and options.
"""

from __future__ import annotations

import gc
import importlib.util
import os
from collections.abc import Callable, Iterator

import pytest
import torch


def cuda_problem() -> str | None:
    """Why the GPU tests cannot run here, or None when they can."""
    if not torch.cuda.is_available():
        return (
            "the GPU tests need an NVIDIA GPU with CUDA, but torch.cuda.is_available() is False here "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); run `python -m pytest -m gpu` "
            "on a GPU machine, or leave out -m gpu (the default run deselects these tests)"
        )
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return "unset TRITON_INTERPRET: the GPU tests check the compiled Triton kernels, not the interpreter"
    if os.environ.get("FORGELLM_KERNELS") == "reference":
        return "unset FORGELLM_KERNELS=reference: the GPU tests check the Triton kernels and CUDA graphs"
    if importlib.util.find_spec("triton") is None:
        return "the GPU tests need Triton (pip install triton, the version your torch build expects)"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail (not skip) every gpu-marked test that cannot run here, before its fixtures build anything."""
    if item.get_closest_marker("gpu") is not None:
        problem = cuda_problem()
        if problem is not None:
            pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session")
def engines(tiny_model_dir) -> Iterator[Callable[..., object]]:
    """get(model, **options) -> an LLM on the GPU, built once per (model, options) for the session.

    model is "demo" (the embedded demo model) or the name of a tiny fixture (tests/fixtures).
    """
    from forgellm import LLM

    built: dict[tuple, LLM] = {}

    def get(model: str, **options: object) -> LLM:
        key = (model, repr(sorted(options.items())))  # options may hold dicts (speculative_config)
        if key not in built:
            path = None if model == "demo" else str(tiny_model_dir(model))
            defaults = dict(device="cuda", max_num_seqs=16, seed=0)
            if model == "demo":  # the tiny fixtures' own context is 256 or less
                defaults["max_model_len"] = 1024
            built[key] = LLM(path, **(defaults | options))
        return built[key]

    yield get
    built.clear()
    gc.collect()
    torch.cuda.empty_cache()
