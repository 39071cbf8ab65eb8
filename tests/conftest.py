"""Shared fixtures: tiny random HF checkpoints made once per test session by a committed script.

Without a CUDA device Triton can only run in its CPU interpreter, and TRITON_INTERPRET is read when
`triton.language` is first imported (its built-ins are decorated then): it is set here, before any test can
import Triton indirectly (torch._dynamo does, e.g. while transformers builds a model), so the kernel tests
under tests/kernels run interpreted whatever ran before them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tests.fixtures.make_tiny_models import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """A function name -> path of the tiny checkpoint of that variant (made on first use)."""
    root = tmp_path_factory.mktemp("tiny_models")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = make_tiny_model(name, root)
        return made[name]

    return get
