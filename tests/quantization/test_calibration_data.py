"""Calibration text: reading a user's file or directory, the shipped samples, and cutting token windows.

The shipped calibration sample must hold nothing of the demo's held-out text (the quantization
report measures on it); that is checked against the held-out sample and, where this interpreter's
stdlib is the one the demo's corpus came from, against every held-out module.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import logging
import sys
import sysconfig
from pathlib import Path

import pytest

from forgellm.errors import ConfigError
from forgellm.hf.tokenizer import Tokenizer
from forgellm.quantization.quantize.calibration_data import (
    ASSETS_DIR,
    calibration_samples,
    load_calibration_texts,
    load_heldout_texts,
)

DEMO_DIR = Path(__file__).resolve().parents[2] / "forgellm" / "assets" / "demo"
CORPUS = json.loads((DEMO_DIR / "corpus.json").read_text(encoding="utf-8"))


def long_lines(texts: list[str]) -> set[str]:
    return {s for text in texts for s in (line.strip() for line in text.splitlines()) if len(s) > 40}


def parses_as_python(text: str) -> bool:
    try:
        ast.parse(text)
    except SyntaxError:
        return False
    return True


class NumberTokenizer:
    """Each whitespace-separated integer is one token, so a window shows where in the text it came from."""

    eos_token_id = -1

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [int(word) for word in text.split()]


def numbers(start: int, stop: int) -> str:
    return " ".join(map(str, range(start, stop)))


# --- reading text -------------------------------------------------------------------------------


def test_missing_file_or_directory_names_the_path_and_what_to_pass(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(ConfigError, match=r"nope\.txt does not exist; pass --calibration a UTF-8 text file"):
        load_calibration_texts(missing)
    with pytest.raises(ConfigError, match="does not exist"):
        load_heldout_texts(tmp_path / "no_dir")


@pytest.mark.parametrize("content", ["", "  \n\n\t"])
def test_empty_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"empty\.txt is empty; pass --calibration"):
        load_calibration_texts(path)


def test_empty_directories_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no .txt"):
        load_calibration_texts(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"\x00\x01")
    with pytest.raises(ConfigError, match="holds no .txt"):
        load_calibration_texts(tmp_path)
    (tmp_path / "blank.md").write_text("\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="is empty"):
        load_calibration_texts(tmp_path)


def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("café".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"cannot read calibration text .*latin1\.txt as UTF-8"):
        load_calibration_texts(path)
    with pytest.raises(ConfigError, match="latin1.txt as UTF-8"):
        load_calibration_texts(tmp_path)  # one bad file in a directory is named, not skipped


def test_directory_reads_text_files_recursively_in_path_order(tmp_path: Path) -> None:
    files = {
        "b.txt": "second",
        "a/z.md": "first",
        "c/d/e.py": "x = 1\n",
        "c/data.json": '{"k": 1}',
        "c/empty.txt": "",
        "c/skip.bin": "binary",
        "c/skip.pyc": "compiled",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    # Path order: a/z.md, b.txt, c/d/e.py, c/data.json (empty and non-text files left out).
    assert load_calibration_texts(tmp_path) == ["first", "second", "x = 1\n", '{"k": 1}']
    assert load_calibration_texts(str(tmp_path / "b.txt")) == ["second"]
    assert load_heldout_texts(tmp_path / "a") == ["first"]


# --- the shipped samples ------------------------------------------------------------------------


def test_shipped_samples_load() -> None:
    calibration, heldout = load_calibration_texts(), load_heldout_texts()
    assert len(calibration) >= 20 and 200_000 < sum(len(t.encode("utf-8")) for t in calibration) < 300_000
    assert 30_000 < len(gzip.compress("".join(heldout).encode("utf-8"))) < 60_000
    # Not only code: the licence, language-reference prose and the decoded Zen of Python are in it.
    joined = "\n".join(calibration)
    assert "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2" in joined
    assert "Beautiful is better than ugly." in joined
    assert sum(len(t) for t in calibration if not parses_as_python(t)) > 50_000
    total = sum(p.stat().st_size for p in ASSETS_DIR.iterdir())
    assert total < 400_000


def test_calibration_sample_holds_no_heldout_line() -> None:
    calibration = long_lines(load_calibration_texts())
    heldout = long_lines(load_heldout_texts())
    assert len(heldout) > 1000  # the check below has something to find
    assert not calibration & heldout


@pytest.mark.skipif(
    sys.version.split()[0] != CORPUS["python_version"], reason="the held-out modules are those of Python 3.11.7"
)
def test_calibration_sample_holds_no_line_of_any_heldout_module() -> None:
    root = Path(sysconfig.get_paths()["stdlib"])
    modules = [(root / p.removeprefix("stdlib/")).read_text(encoding="utf-8") for p in CORPUS["heldout_files"]]
    assert len(modules) == 20
    assert not long_lines(load_calibration_texts()) & long_lines(modules)


def test_manifest_names_training_files_and_matches_the_shipped_text() -> None:
    manifest = json.loads((ASSETS_DIR / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["licence"].startswith("PSF-2.0")
    train = {f"stdlib/{p}" for p in CORPUS["train_files"]["stdlib"]}
    held = set(CORPUS["heldout_files"])
    for part, loader in (("calibration", load_calibration_texts), ("heldout", load_heldout_texts)):
        documents = manifest[part]["documents"]
        texts = loader()
        assert [d["sha256"] for d in documents] == [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]
        modules = {d["source"] for d in documents if d["source"].endswith(".py")}
        if part == "calibration":
            assert len(modules) >= 15 and modules <= train and not modules & held
        else:
            assert len(modules) == len(documents) and modules <= held


# --- token windows ------------------------------------------------------------------------------


def test_windows_are_spread_evenly_and_do_not_overlap_when_the_text_is_long_enough(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        samples = calibration_samples(NumberTokenizer(), [numbers(0, 1000)], num_samples=4, seq_len=100)
    assert [s[0] for s in samples] == [0, 300, 600, 900]  # first at the start, last ending at the end
    assert all(s == list(range(s[0], s[0] + 100)) for s in samples)
    assert not caplog.records


def test_windows_overlap_with_a_warning_when_the_text_is_short(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        samples = calibration_samples(NumberTokenizer(), [numbers(0, 250)], num_samples=3, seq_len=100)
    assert [s[0] for s in samples] == [0, 75, 150]
    assert all(len(s) == 100 for s in samples)
    assert "250 tokens, fewer than 3 samples x 100 tokens" in caplog.text


def test_texts_are_joined_with_the_end_of_text_token_in_seed_order() -> None:
    texts = [numbers(0, 100), numbers(1000, 1100)]
    joined = {
        tuple(calibration_samples(NumberTokenizer(), texts, num_samples=1, seq_len=201, seed=seed)[0])
        for seed in range(8)
    }
    forward = tuple([*range(0, 100), -1, *range(1000, 1100)])
    backward = tuple([*range(1000, 1100), -1, *range(0, 100)])
    assert joined == {forward, backward}  # the seed changes the order; nothing else is added or lost


def test_too_little_text_says_how_many_tokens() -> None:
    with pytest.raises(ConfigError, match="only 50 tokens, fewer than one sample of 64; pass a smaller --seq-len"):
        calibration_samples(NumberTokenizer(), [numbers(0, 50)], num_samples=2, seq_len=64)


@pytest.mark.parametrize(("num_samples", "seq_len", "message"), [(0, 16, "samples must be >= 1"), (4, 1, ">= 2")])
def test_bad_counts_are_refused(num_samples: int, seq_len: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        calibration_samples(NumberTokenizer(), [numbers(0, 100)], num_samples, seq_len)


def test_samples_of_the_shipped_text_with_the_demo_tokenizer(caplog) -> None:
    tokenizer = Tokenizer.from_dir(DEMO_DIR)
    texts = load_calibration_texts()
    with caplog.at_level(logging.WARNING):
        samples = calibration_samples(tokenizer, texts, num_samples=64, seq_len=512)
    assert len(samples) == 64 and {len(s) for s in samples} == {512}
    assert not caplog.records  # 64 x 512 tokens fit in the sample without overlap
    assert samples == calibration_samples(tokenizer, texts, num_samples=64, seq_len=512)
    assert samples != calibration_samples(tokenizer, texts, num_samples=64, seq_len=512, seed=1)
    assert max(max(s) for s in samples) < tokenizer.vocab_size
    # The separator is the end-of-text token the demo trained with between documents.
    assert sum(s.count(tokenizer.eos_token_id) for s in samples) > 0
