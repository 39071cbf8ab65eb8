"""The model author's sampling defaults, read from generation_config.json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgellm.errors import ModelLoadError
from forgellm.hf.config import read_json_file

_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "repetition_penalty")
_INT_FIELDS = ("top_k", "max_new_tokens")


@dataclass(frozen=True)
class GenerationDefaults:
    """Values stated in generation_config.json; None (or an empty tuple) where the file is silent."""

    eos_token_ids: tuple[int, ...] = ()
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    max_new_tokens: int | None = None


def load_generation_defaults(model_dir: str | Path) -> GenerationDefaults:
    """Read `model_dir/generation_config.json`; a missing file gives all defaults unset."""
    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return GenerationDefaults()
    raw = read_json_file(path)
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    values: dict[str, Any] = {"eos_token_ids": _eos_ids(raw.get("eos_token_id"), path)}
    for name in _FLOAT_FIELDS:
        value = raw.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ModelLoadError(f"{path}: '{name}' must be a number, got {value!r}")
            values[name] = float(value)
    for name in _INT_FIELDS:
        value = raw.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ModelLoadError(f"{path}: '{name}' must be an integer, got {value!r}")
            values[name] = value
    return GenerationDefaults(**values)


def _eos_ids(value: Any, path: Path) -> tuple[int, ...]:
    if value is None:
        return ()
    ids = value if isinstance(value, list) else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ModelLoadError(f"{path}: 'eos_token_id' must be an integer or a list of integers, got {value!r}")
    return tuple(ids)
