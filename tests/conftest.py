"""Shared fixtures: tiny random HF checkpoints made once per test session by a committed script."""

from __future__ import annotations

from pathlib import Path

import pytest

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
