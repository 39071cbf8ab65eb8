"""Reporting benchmark figures: aligned text tables, JSON files, and results.jsonl records."""

from __future__ import annotations

import datetime
import json
import math
import os
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

# The suite may run where there is no git checkout (a copy of the tree on the GPU machine).
COMMIT_ENV_VAR = "FORGELLM_COMMIT"
RECORD_KEYS = ("date", "commit", "gpu", "model", "metric", "value", "unit", "command")


def fmt(value: float | int | str | None, digits: int = 2) -> str:
    """A number with `digits` decimals and thousands separators; 'n/a' for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def format_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned (numbers)."""
    rows = [list(map(str, row)) for row in rows]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        parts = [str(first).ljust(widths[0])] + [str(c).rjust(w) for c, w in zip(rest, widths[1:])]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def format_header(title: str, facts: dict[str, Any]) -> str:
    """A title line and `name: value` lines (model, device, dtype, shapes) above a table."""
    width = max(map(len, facts), default=0)
    return "\n".join([title, *(f"  {name.ljust(width)}  {value}" for name, value in facts.items())])


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write `data` as indented JSON (NaN becomes null so other tools can read it)."""
    Path(path).write_text(json.dumps(_without_nan(data), indent=2) + "\n", encoding="utf-8")


def _without_nan(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(v) for v in value]
    return value


def git_commit(cwd: str | Path | None = None) -> str:
    """The short commit of the checkout, else $FORGELLM_COMMIT, else 'unknown'."""
    try:
        found = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        found = ""
    return found or os.environ.get(COMMIT_ENV_VAR) or "unknown"


def today() -> str:
    """The UTC date, YYYY-MM-DD, as results.jsonl records it."""
    return datetime.datetime.now(datetime.timezone.utc).date().isoformat()


def make_record(
    metric: str, value: float, unit: str, *, model: str, gpu: str, commit: str, command: str, date: str | None = None
) -> dict[str, Any]:
    """One results.jsonl line: {"date","commit","gpu","model","metric","value","unit","command"}."""
    record = {
        "date": date or today(),
        "commit": commit,
        "gpu": gpu,
        "model": model,
        "metric": metric,
        "value": value,
        "unit": unit,
        "command": command,
    }
    return {key: record[key] for key in RECORD_KEYS}


def append_results(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Append records as JSON lines (skipping NaN values); returns how many were written."""
    lines = [json.dumps(r) for r in records if not (isinstance(r["value"], float) and math.isnan(r["value"]))]
    if lines:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as file:
            file.write("".join(line + "\n" for line in lines))
    return len(lines)


def verdict(value: float, goal: float, higher_is_better: bool) -> str:
    """'PASS', or 'MISS (72% of target)' so a miss says how far off it is."""
    ok = value >= goal if higher_is_better else value <= goal
    return "PASS" if ok else f"MISS ({value / goal:.0%} of target)"
