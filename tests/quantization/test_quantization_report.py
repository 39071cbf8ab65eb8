"""The quantization accuracy report on the trained demo model: against itself, and against its int4 copy.

A model against itself must agree everywhere and change nothing; int4 round-to-nearest must cost a
little perplexity and some agreement, and no more than a little. Two held-out excerpts in windows
of 255 tokens (800 tokens in all) keep each report to a few seconds on a CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import weakref
from pathlib import Path

import pytest

import forgellm
from forgellm.hf.tokenizer import Tokenizer
from forgellm.quantization.quantize.calibration_data import load_heldout_texts
from forgellm.quantization.quantize.report import (
    REPORT_FILE,
    ModelScore,
    QuantizationReport,
    build_report,
    format_report_table,
    write_report,
)

DEMO_DIR = Path(__file__).resolve().parents[2] / "forgellm" / "assets" / "demo"
MAX_MODEL_LEN = 256  # windows of 255 tokens


@pytest.fixture(scope="module")
def texts() -> list[str]:
    heldout = load_heldout_texts()
    return [heldout[1][:1500], heldout[5][:1500]]


@pytest.fixture(scope="module")
def self_report(texts: list[str]) -> QuantizationReport:
    return build_report(DEMO_DIR, DEMO_DIR, "none", texts, device="cpu", max_model_len=MAX_MODEL_LEN)


@pytest.fixture(scope="module")
def int4_report(texts: list[str]) -> QuantizationReport:
    return build_report(
        DEMO_DIR, DEMO_DIR, "int4", texts, device="cpu", max_model_len=MAX_MODEL_LEN, quantization="int4"
    )


def expected_scored_tokens(texts: list[str]) -> int:
    """Each text is cut into windows of 255 tokens whose first token is context only."""
    tokenizer = Tokenizer.from_dir(DEMO_DIR)
    lengths = [len(tokenizer.encode(text)) for text in texts]
    assert all((n - 1) % (MAX_MODEL_LEN - 1) for n in lengths)  # no text ends exactly on a window edge
    return sum(n - math.ceil((n - 1) / (MAX_MODEL_LEN - 1)) for n in lengths)


def with_timings_of(reference: ModelScore, other: ModelScore) -> ModelScore:
    """`reference` with `other`'s timings, so the two compare on their numbers alone."""
    return dataclasses.replace(reference, load_seconds=other.load_seconds, score_seconds=other.score_seconds)


def test_a_model_against_itself_agrees_everywhere(self_report: QuantizationReport, texts: list[str]) -> None:
    assert self_report.top1_agreement == 1.0
    assert self_report.perplexity_change_pct == 0.0
    assert self_report.input.perplexity == self_report.output.perplexity
    # The demo's held-out perplexity is 8.27 on whole files; short excerpts in short windows are higher
    # (12.7 here), and far below what an untrained model gets (thousands).
    assert 4.0 < self_report.input.perplexity < 20.0
    assert self_report.tokens_scored == expected_scored_tokens(texts)
    assert self_report.num_texts == 2 and self_report.device == "cpu"
    assert self_report.input.quantization is None and self_report.output.quantization is None


def test_int4_costs_a_little_perplexity_and_some_agreement(
    self_report: QuantizationReport, int4_report: QuantizationReport
) -> None:
    assert int4_report.input == with_timings_of(self_report.input, int4_report.input)  # the same bf16 run
    assert 0.5 < int4_report.perplexity_change_pct < 30.0
    expected = 100 * (int4_report.output.perplexity / int4_report.input.perplexity - 1)
    assert int4_report.perplexity_change_pct == pytest.approx(expected)
    assert 0.7 < int4_report.top1_agreement < 1.0
    assert "int4" in int4_report.output.quantization
    assert int4_report.output.weight_bytes < 0.6 * int4_report.input.weight_bytes
    assert int4_report.tokens_scored == self_report.tokens_scored


def test_the_first_model_is_freed_before_the_second_loads_and_the_source_is_kept(monkeypatch, texts: list[str]) -> None:
    alive_at_load: list[int] = []
    instances: list[weakref.ref] = []

    class TrackedLLM(forgellm.LLM):
        def __init__(self, *args, **kwargs) -> None:
            alive_at_load.append(sum(ref() is not None for ref in instances))
            super().__init__(*args, **kwargs)
            instances.append(weakref.ref(self))

    monkeypatch.setattr(forgellm, "LLM", TrackedLLM)
    report = build_report(
        DEMO_DIR, DEMO_DIR, "none", [texts[0][:400]], device="cpu", max_model_len=MAX_MODEL_LEN, texts_source="my file"
    )
    assert alive_at_load == [0, 0]
    assert report.texts_source == "my file" and report.num_texts == 1


def test_table_and_json(int4_report: QuantizationReport, tmp_path: Path) -> None:
    table = format_report_table(int4_report)
    lines = table.splitlines()
    assert lines[0].startswith(f"accuracy of int4: {int4_report.tokens_scored} tokens of 2 texts")
    assert lines[2].startswith("input") and lines[3].startswith("output")
    assert f"{int4_report.output.perplexity:.4f}" in lines[3]
    assert f"+{int4_report.perplexity_change_pct:.2f}%" in lines[3]
    assert f"{100 * int4_report.top1_agreement:.2f}%" in lines[3]
    assert "%" not in lines[2]  # the input row has no change or agreement

    path = write_report(int4_report, tmp_path)
    assert path == tmp_path / REPORT_FILE
    assert [p.name for p in tmp_path.iterdir()] == [REPORT_FILE]  # no partial file left behind
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["scheme"] == "int4" and data["tokens_scored"] == int4_report.tokens_scored
    assert data["top1_agreement"] == int4_report.top1_agreement
    assert data["output"]["perplexity"] == int4_report.output.perplexity
    assert set(data["input"]) >= {"path", "perplexity", "load_seconds", "score_seconds", "weight_bytes"}
