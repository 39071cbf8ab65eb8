"""The accuracy report `forgellm quantize` prints at the end, and writes as OUT_DIR/quantization_report.json.

It measures what quantizing cost on held-out text through forgellm's own engine: the perplexity of
the input and output models, its relative change, and how often their next-token top-1 predictions
agree. Both models score exactly the same tokens (forgellm.eval), loaded one after the other so the
peak memory is one model's.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgellm.eval import TokenScores, greedy_agreement, perplexity_report, score_texts
from forgellm.quantization.quantize.calibration_data import DEFAULT_HELDOUT_DESCRIPTION, load_heldout_texts

REPORT_FILE = "quantization_report.json"


@dataclass(frozen=True)
class ModelScore:
    """One model's numbers on the report's text, and what loading and scoring it took."""

    path: str
    quantization: str | None  # as the engine loaded it; None: not quantized
    weight_bytes: int
    perplexity: float
    mean_nll: float
    top1_accuracy: float
    load_seconds: float
    score_seconds: float


@dataclass(frozen=True)
class QuantizationReport:
    """Input vs output model on the same held-out tokens: perplexities, their change, top-1 agreement."""

    scheme: str
    texts_source: str
    num_texts: int
    tokens_scored: int
    device: str
    input: ModelScore
    output: ModelScore
    perplexity_change_pct: float  # 100 * (output / input - 1): positive means the output is worse
    top1_agreement: float  # fraction of scored positions where both models' most likely token is the same

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return dataclasses.asdict(self)


def _score(model_dir: str | Path, texts: list[str], options: dict[str, Any]) -> tuple[TokenScores, ModelScore, str]:
    """Load one model, score `texts`, and free it before returning (so the next load has the memory)."""
    import torch

    from forgellm import LLM

    started = time.perf_counter()
    llm = LLM(str(model_dir), **options)
    loaded = time.perf_counter()
    scores = score_texts(llm, texts)
    scored = time.perf_counter()
    ppl = perplexity_report(scores)
    info, device = llm.engine.model_info, llm.engine.core.runner.device
    result = ModelScore(
        str(model_dir),
        info.quantization,
        info.weight_bytes,
        ppl.perplexity,
        ppl.mean_nll,
        ppl.top1_accuracy,
        round(loaded - started, 3),
        round(scored - loaded, 3),
    )
    del llm
    gc.collect()  # the engine holds reference cycles; its tensors go only when they are collected
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return scores, result, str(device)


def build_report(
    input_dir: str | Path,
    output_dir: str | Path,
    scheme: str,
    texts: list[str] | None = None,
    *,
    device: str | None = None,
    max_model_len: int | None = None,
    texts_source: str | None = None,
    **llm_options: Any,
) -> QuantizationReport:
    """Score `texts` (None: the shipped held-out sample) with the input model, then with the output model.

    `llm_options` (any LLM keyword, e.g. quantization="int8") apply to the output model only; windows
    are max_model_len - 1 tokens, as in `forgellm eval perplexity`.
    """
    shipped = load_heldout_texts()
    if texts is None:
        texts = shipped
    if texts_source is None:
        texts_source = DEFAULT_HELDOUT_DESCRIPTION if texts == shipped else f"{len(texts)} texts given to build_report"
    common = {"device": device or "auto", "max_model_len": max_model_len}
    input_scores, input_score, used_device = _score(input_dir, texts, common)
    output_scores, output_score, _ = _score(output_dir, texts, {**common, **llm_options})
    return QuantizationReport(
        scheme=scheme,
        texts_source=texts_source,
        num_texts=len(texts),
        tokens_scored=len(input_scores.token_ids),
        device=used_device,
        input=input_score,
        output=output_score,
        perplexity_change_pct=100.0 * (output_score.perplexity / input_score.perplexity - 1.0),
        top1_agreement=greedy_agreement(input_scores, output_scores),
    )


def format_report_table(report: QuantizationReport) -> str:
    """The report as a small text table, one row per model."""
    header = ("", "model", "quantization", "weights", "perplexity", "change", "top-1 agreement")
    rows = [header]
    for role, score in (("input", report.input), ("output", report.output)):
        is_output = role == "output"
        rows.append(
            (
                role,
                score.path,
                score.quantization or "none",
                f"{score.weight_bytes / 2**20:.1f} MiB",
                f"{score.perplexity:.4f}",
                f"{report.perplexity_change_pct:+.2f}%" if is_output else "",
                f"{100 * report.top1_agreement:.2f}%" if is_output else "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    # Text columns left-aligned, numbers right-aligned.
    lines = [
        "  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
        for row in rows
    ]
    title = (
        f"accuracy of {report.scheme}: {report.tokens_scored} tokens of {report.texts_source}, "
        f"scored on {report.device}"
    )
    return "\n".join([title, *lines])


def write_report(report: QuantizationReport, out_dir: str | Path) -> Path:
    """Write OUT_DIR/quantization_report.json (whole or not at all) and return its path."""
    path = Path(out_dir) / REPORT_FILE
    partial = path.with_name(f".{REPORT_FILE}.partial")
    partial.write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)  # a crash mid-write leaves no report that looks complete
    return path
