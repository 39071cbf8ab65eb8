"""Build the calibration and held-out evaluation samples that ship in forgellm/assets/calibration/.

    python tools/make_calibration_sample.py [--out forgellm/assets/calibration]

`forgellm quantize` calibrates on text, and its accuracy report measures on the embedded demo model,
so the calibration sample must hold nothing of the demo's held-out files (the report would flatter
a method that fits them). Both samples come from this interpreter's own stdlib (Python 3.11.7, the
version the demo's corpus was built from; PSF licence), deterministically (hash order, no clock), so
a rerun writes byte-identical files:

  calibration_sample.jsonl.gz  training-split stdlib modules (docstring-heavy ones and ordinary code),
                               English prose from the pydoc language-reference topics, the stdlib's
                               LICENSE.txt and the Zen of Python (decoded from `this`); no held-out
                               module, and no file sharing a line of over 40 characters with one
  heldout_eval_sample.jsonl.gz whole held-out modules of the demo, the quantization report's default text
  manifest.json                every document's source, size and sha256, and the licence
"""

from __future__ import annotations

import argparse
import ast
import codecs
import gzip
import io
import json
import sys
from pathlib import Path

from corpus_sources import SourceFile, pydoc_topics, python_version, stable_hash, stdlib_dir, stdlib_files

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "forgellm" / "assets" / "demo" / "corpus.json"
DEFAULT_OUT = ROOT / "forgellm" / "assets" / "calibration"
CALIBRATION_FILE = "calibration_sample.jsonl.gz"
HELDOUT_FILE = "heldout_eval_sample.jsonl.gz"
# Byte targets (uncompressed; gzip shrinks this text about 3.7x): together about 250 kB of calibration text.
DOCSTRING_BYTES, CODE_BYTES, TOPIC_BYTES = 90_000, 90_000, 50_000
HELDOUT_BYTES = 160_000  # about 45k tokens: a perplexity stable to a few tenths of a percent, quick on a CPU
FILE_BYTES = (2_000, 40_000)  # many mid-sized modules rather than a few large ones
DOCSTRING_HEAVY = 0.35  # a module whose docstrings are at least this fraction of its text
LONG_LINE = 40  # lines longer than this (stripped) must not be shared with a held-out file
# Outside the library proper: tests, IDLE, 2to3 and the GUI demos are less like code people write.
EXCLUDED_TOPS = ("test", "idlelib", "lib2to3", "distutils", "turtledemo", "tkinter", "ctypes")
LICENCE = "PSF-2.0 (Python Software Foundation License Version 2; the text is stdlib/LICENSE.txt, in the sample)"


def long_lines(text: str) -> set[str]:
    """The stripped lines of `text` longer than LONG_LINE characters."""
    return {s for s in (line.strip() for line in text.splitlines()) if len(s) > LONG_LINE}


def docstring_fraction(text: str) -> float:
    """The fraction of a module's characters that are module, class or function docstrings."""
    tree = ast.parse(text)
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef))]
    return sum(len(ast.get_docstring(n, clean=False) or "") for n in nodes) / max(1, len(text))


def take(items: list[tuple[str, str]], budget: int) -> list[tuple[str, str]]:
    """(name, text) items in hash order of their names until `budget` bytes are reached."""
    chosen, total = [], 0
    for name, text in sorted(items, key=lambda item: stable_hash(item[0])):
        if total >= budget:
            break
        chosen.append((name, text))
        total += len(text.encode("utf-8"))
    return chosen


def calibration_documents(train: list[SourceFile], held_lines: set[str]) -> list[tuple[str, str, str]]:
    """(source, kind, text) of the calibration sample: modules, topics, the licence and the Zen."""
    low, high = FILE_BYTES
    candidates = [
        f
        for f in train
        if f.relpath.split("/")[0] not in EXCLUDED_TOPS
        and not {"test", "tests"} & set(f.relpath.split("/"))
        and low <= len(f.text.encode("utf-8")) <= high
        and not long_lines(f.text) & held_lines
    ]
    heavy = [(f"stdlib/{f.relpath}", f.text) for f in candidates if docstring_fraction(f.text) >= DOCSTRING_HEAVY]
    heavy = take(heavy, DOCSTRING_BYTES)
    chosen = {name for name, _ in heavy}
    rest = [(f"stdlib/{f.relpath}", f.text) for f in candidates]
    code = take([(name, text) for name, text in rest if name not in chosen], CODE_BYTES)
    topics = [(f"pydoc_topics/{k}", v) for k, v in pydoc_topics().items() if not long_lines(v) & held_lines]
    topics = take(topics, TOPIC_BYTES)
    this_source = (stdlib_dir() / "this.py").read_text(encoding="utf-8")
    rot13 = next(n.value.value for n in ast.parse(this_source).body if isinstance(n, ast.Assign))
    documents = [(name, "docstring-heavy module", text) for name, text in heavy]
    documents += [(name, "module", text) for name, text in code]
    documents += [(name, "language reference prose (pydoc topic)", text) for name, text in topics]
    documents.append(("stdlib/LICENSE.txt", "licence text", (stdlib_dir() / "LICENSE.txt").read_text(encoding="utf-8")))
    documents.append(("stdlib/this.py (decoded)", "the Zen of Python", codecs.decode(rot13, "rot13") + "\n"))
    return documents


def write_jsonl_gz(path: Path, documents: list[tuple[str, str, str]]) -> int:
    """One {"source", "text"} object per line, gzip with no name or time in the header; returns the size."""
    lines = "".join(json.dumps({"source": s, "text": t}, ensure_ascii=False) + "\n" for s, _, t in documents)
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as fh:
        fh.write(lines.encode("utf-8"))
    path.write_bytes(buffer.getvalue())
    return len(buffer.getvalue())


def manifest_entry(file: str, size: int, documents: list[tuple[str, str, str]], what: str) -> dict:
    """The manifest's record of one sample file."""
    return {
        "file": file,
        "what": what,
        "gzip_bytes": size,
        "text_bytes": sum(len(t.encode("utf-8")) for _, _, t in documents),
        "documents": [
            {"source": s, "kind": k, "bytes": len(t.encode("utf-8")), "sha256": stable_hash(t)} for s, k, t in documents
        ],
    }


def main(argv: list[str] | None = None) -> int:
    """Select the documents, write both samples and the manifest under --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: the package's)")
    args = parser.parse_args(argv)
    corpus = json.loads(CORPUS.read_text(encoding="utf-8"))
    if python_version() != corpus["python_version"]:
        print(f"error: run with Python {corpus['python_version']}, whose stdlib the demo's corpus is", file=sys.stderr)
        return 2
    files = {f.relpath: f for f in stdlib_files()}
    held_names = [path.removeprefix("stdlib/") for path in corpus["heldout_files"]]
    held = [files[name] for name in held_names]
    train = [files[name] for name in corpus["train_files"]["stdlib"] if name in files]
    held_lines = set().union(*(long_lines(f.text) for f in held))

    calibration = calibration_documents(train, held_lines)
    picked = take([(f.relpath, f.text) for f in held], HELDOUT_BYTES)
    heldout = [(f"stdlib/{name}", "held-out module", text) for name, text in picked]
    heldout.sort(key=lambda d: d[0])
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "python_version": python_version(),
        "licence": LICENCE,
        "built_by": "tools/make_calibration_sample.py",
        "calibration": manifest_entry(
            CALIBRATION_FILE,
            write_jsonl_gz(args.out / CALIBRATION_FILE, calibration),
            calibration,
            "calibration text: stdlib modules the demo trained on, pydoc topics, LICENSE.txt, the Zen of Python; "
            "nothing from (or sharing a line of over 40 characters with) a held-out module",
        ),
        "heldout": manifest_entry(
            HELDOUT_FILE,
            write_jsonl_gz(args.out / HELDOUT_FILE, heldout),
            heldout,
            "evaluation text: whole stdlib modules the demo never trained on (its held-out split)",
        ),
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    for part in ("calibration", "heldout"):
        entry = manifest[part]
        count, raw, packed = len(entry["documents"]), entry["text_bytes"], entry["gzip_bytes"]
        print(f"{entry['file']}: {count} documents, {raw} B -> {packed} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
