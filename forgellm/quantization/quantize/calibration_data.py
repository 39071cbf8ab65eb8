"""Calibration text for `forgellm quantize`, and the held-out text its accuracy report measures on.

Calibrated schemes (GPTQ, AWQ, static FP8 scales) fit the quantized weights to activations seen on
some text. By default that is a sample shipped with the package (built by
tools/make_calibration_sample.py) that holds nothing of the demo model's held-out files, so the
report's perplexity, measured on those files, is not flattered by calibrating on them. A user's
file or directory of text overrides it.
"""

from __future__ import annotations

import gzip
import json
import logging
import random
from pathlib import Path
from typing import Protocol

from forgellm.errors import ConfigError

logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parent.parent.parent / "assets" / "calibration"
CALIBRATION_SAMPLE = ASSETS_DIR / "calibration_sample.jsonl.gz"
HELDOUT_SAMPLE = ASSETS_DIR / "heldout_eval_sample.jsonl.gz"
DEFAULT_CALIBRATION_DESCRIPTION = (
    "a 270 kB sample shipped with forgellm: Python 3.11 stdlib modules (docstring-heavy and plain code), "
    "language-reference prose from pydoc, the PSF licence and the Zen of Python, none of it from the "
    "demo model's held-out files"
)
DEFAULT_HELDOUT_DESCRIPTION = "the demo model's held-out text shipped with forgellm (12 whole stdlib modules, 187 kB)"
# What a directory contributes: text a person wrote, not binaries, caches or lock files.
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".json", ".jsonl", ".yaml", ".yml", ".toml", ".html", ".c", ".h")


class _Encoder(Protocol):
    """What calibration_samples needs of a tokenizer (forgellm.hf.tokenizer.Tokenizer has it)."""

    eos_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...


def load_calibration_texts(source: str | Path | None = None) -> list[str]:
    """Calibration texts: the shipped sample (None), one file's text, or a directory's text files."""
    if source is None:
        return _read_sample(CALIBRATION_SAMPLE)
    return _read_user_texts(Path(source), "--calibration", "calibration text")


def load_heldout_texts(source: str | Path | None = None) -> list[str]:
    """Evaluation texts for the accuracy report: the shipped held-out sample (None), a file or a directory."""
    if source is None:
        return _read_sample(HELDOUT_SAMPLE)
    return _read_user_texts(Path(source), "an evaluation file", "evaluation text")


def _read_sample(path: Path) -> list[str]:
    """The texts of one shipped .jsonl.gz sample (one {"source", "text"} object per line)."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            return [json.loads(line)["text"] for line in fh if line.strip()]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"the shipped sample {path} is missing or damaged ({exc}); reinstall forgellm or pass a text file or "
            "directory instead"
        ) from None


def _read_user_texts(path: Path, option: str, what: str) -> list[str]:
    """UTF-8 text of a file, or of a directory's TEXT_SUFFIXES files (recursively, in path order)."""
    instead = f"pass {option} a UTF-8 text file or a directory of {'/'.join(TEXT_SUFFIXES[:4])}... files"
    if not path.exists():
        raise ConfigError(f"{what} {path} does not exist; {instead}, or leave it out for the shipped sample")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise ConfigError(f"{what} directory {path} holds no {'/'.join(TEXT_SUFFIXES)} files; {instead}")
    else:
        files = [path]
    texts = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {what} {file} as UTF-8 ({exc}); {instead}") from None
        if text.strip():  # an empty file in a directory of good ones is harmless; all empty is not
            texts.append(text)
    if not texts:
        raise ConfigError(f"{what} {path} is empty; {instead}")
    return texts


def _separator(tokenizer: _Encoder) -> list[int]:
    """The ids put between texts: the end-of-text token the model saw between documents, else a blank line."""
    if tokenizer.eos_token_id is not None:
        return [tokenizer.eos_token_id]
    return tokenizer.encode("\n\n", add_special_tokens=False)


def calibration_samples(
    tokenizer: _Encoder, texts: list[str], num_samples: int, seq_len: int, seed: int = 0
) -> list[list[int]]:
    """`num_samples` windows of exactly `seq_len` token ids, spread evenly over the concatenated texts.

    `seed` shuffles the texts' order before they are joined, so windows span different neighbours.
    """
    if num_samples < 1:
        raise ConfigError(f"the number of calibration samples must be >= 1, got {num_samples}")
    if seq_len < 2:
        raise ConfigError(f"the calibration sequence length must be >= 2 tokens, got {seq_len}")
    if not texts:
        raise ConfigError("no calibration text was given; pass a text file or directory, or use the shipped sample")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    separator = _separator(tokenizer)
    stream: list[int] = []
    for position, index in enumerate(order):
        if position:
            stream += separator
        stream += tokenizer.encode(texts[index])
    total = len(stream)
    if total < seq_len:
        raise ConfigError(
            f"the calibration text is only {total} tokens, fewer than one sample of {seq_len}; "
            "pass a smaller --seq-len or more text"
        )
    if total < num_samples * seq_len:
        logger.warning(
            "the calibration text has %d tokens, fewer than %d samples x %d tokens = %d: the samples overlap; "
            "pass more text, or a smaller --num-samples or --seq-len",
            total,
            num_samples,
            seq_len,
            num_samples * seq_len,
        )
    # Evenly spaced starts from 0 to total - seq_len; when the text is long enough the spacing is at
    # least seq_len, so the windows do not overlap.
    last = total - seq_len
    starts = [0] if num_samples == 1 else [i * last // (num_samples - 1) for i in range(num_samples)]
    return [stream[start : start + seq_len] for start in starts]
