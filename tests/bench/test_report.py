"""Report helpers: tables, JSON files and results.jsonl records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from forgellm.bench import report


def test_fmt() -> None:
    assert report.fmt(12345.678) == "12,345.68"
    assert report.fmt(3, 1) == "3"
    assert report.fmt(1.23456, 3) == "1.235"
    assert report.fmt(math.nan) == "n/a" and report.fmt(None) == "n/a"
    assert report.fmt("x") == "x"


def test_format_table_aligns_columns() -> None:
    text = report.format_table(["metric", "value"], [["a", "1.00"], ["longer name", "123.45"]])
    lines = text.splitlines()
    assert lines[0].startswith("metric") and set(lines[1]) <= {"-", " "}
    assert lines[2] == "a              1.00"
    assert lines[3] == "longer name  123.45"


def test_write_json_turns_nan_into_null(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    report.write_json(path, {"a": math.nan, "b": [1.5, math.nan], "c": {"d": 2}})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.5, None], "c": {"d": 2}}


def test_append_results_writes_records_in_order(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "results.jsonl"
    common = dict(model="llama-3.1-8b", gpu="NVIDIA H200", commit="abc1234", command="forgellm bench latency")
    first = report.make_record("decode_b1_tok_s", 250.0, "tok/s", date="2026-11-22", **common)
    skipped = report.make_record("ttft_128_ms", math.nan, "ms", **common)
    assert report.append_results(path, [first, skipped]) == 1
    assert report.append_results(path, [first]) == 1
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    record = json.loads(lines[0])
    assert list(record) == ["date", "commit", "gpu", "model", "metric", "value", "unit", "command"]
    assert record["metric"] == "decode_b1_tok_s" and record["value"] == 250.0 and record["date"] == "2026-11-22"


def test_git_commit_falls_back_to_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(report.COMMIT_ENV_VAR, "feedbee")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no repository above tmp_path counts
    assert report.git_commit(tmp_path) == "feedbee"
    monkeypatch.delenv(report.COMMIT_ENV_VAR)
    assert report.git_commit(tmp_path) == "unknown"


def test_verdict() -> None:
    assert report.verdict(260.0, 255.0, True) == "PASS"
    assert report.verdict(188.0, 255.0, True) == "MISS (74% of target)"
    assert report.verdict(50.0, 60.0, False) == "PASS"
    assert report.verdict(90.0, 60.0, False) == "MISS (150% of target)"
