"""Model-config presets: the reference shapes, for benchmarks with random weights (no checkpoint)."""

from __future__ import annotations

from pathlib import Path

from forgellm.errors import ConfigError

PRESETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "presets"
PRESETS = tuple(sorted(p.name for p in PRESETS_DIR.iterdir() if (p / "config.json").is_file()))


def preset_dir(name: str) -> Path:
    """The directory holding preset `name`'s config.json (use with load_format="dummy")."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model-config preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS_DIR / name
