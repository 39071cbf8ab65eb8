"""Build the demo model's training corpus and held-out evaluation set from text already on disk.

    python tools/build_corpus.py [--out .train]

Writes, under --out (kept out of git):
  train.jsonl    one JSON object per document: {"source": ..., "text": ...}, code, pydoc topics and
                 synthesized ChatML question/answer pairs
  heldout/       whole stdlib files never trained on (nor any file sharing their name), for
                 `forgellm eval perplexity --dir`
  corpus.json    the record of exactly what went in, with licences (shipped as assets/demo/corpus.json)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from chat_pairs import chat_documents
from corpus_sources import (
    EXTRA_PACKAGES,
    SourceFile,
    package_files,
    package_record,
    pydoc_topics,
    python_version,
    stable_hash,
    stdlib_files,
)

DEFAULT_OUT = Path(__file__).resolve().parent.parent / ".train"
HELDOUT_BYTES = 300_000  # about 90k tokens: enough for a stable perplexity, quick on a CPU
HELDOUT_FILE_BYTES = (3_000, 40_000)
# Held out from the library proper: tests, IDLE, 2to3 and distutils are less like code people write.
HELDOUT_EXCLUDED_TOPS = ("test", "idlelib", "lib2to3", "distutils", "turtledemo", "tkinter", "ctypes")
STDLIB_LICENCE = "PSF-2.0 (a few modules add permissive notices, listed in the stdlib's LICENSE.txt)"


def choose_heldout(files: list[SourceFile]) -> list[SourceFile]:
    """Whole stdlib modules, picked by a hash of their path, until HELDOUT_BYTES are reached."""
    low, high = HELDOUT_FILE_BYTES
    candidates = [
        f
        for f in files
        if f.source == "stdlib"
        and f.relpath.split("/")[0] not in HELDOUT_EXCLUDED_TOPS
        and not {"test", "tests"} & set(f.relpath.split("/"))
        and not f.relpath.endswith("__init__.py")
        and low <= len(f.text.encode("utf-8")) <= high
    ]
    chosen, total = [], 0
    for f in sorted(candidates, key=lambda f: stable_hash(f.relpath)):
        if total >= HELDOUT_BYTES:
            break
        chosen.append(f)
        total += len(f.text.encode("utf-8"))
    return sorted(chosen, key=lambda f: f.relpath)


def split_corpus(files: list[SourceFile]) -> tuple[list[SourceFile], list[SourceFile], list[dict]]:
    """(train, heldout, dropped): exact duplicates and namesakes of held-out files never train.

    A file named like a held-out one (say another `decoder.py`) may be a copy or a close variant,
    which would make the held-out perplexity look better than it is; dropping it costs little.
    """
    heldout = choose_heldout(files)
    held_paths = {(f.source, f.relpath) for f in heldout}
    held_names = {Path(f.relpath).name for f in heldout}
    held_hashes = {stable_hash(f.text) for f in heldout}
    train, dropped, seen = [], [], set()
    for f in files:
        if (f.source, f.relpath) in held_paths:
            continue
        digest = stable_hash(f.text)
        reason = None
        if Path(f.relpath).name in held_names:
            reason = "shares its name with a held-out file"
        elif digest in held_hashes or digest in seen:
            reason = "exact duplicate"
        if reason:
            dropped.append({"source": f.source, "path": f.relpath, "reason": reason})
            continue
        seen.add(digest)
        train.append(f)
    return train, heldout, dropped


def corpus_record(train: list[SourceFile], heldout: list[SourceFile], dropped: list[dict], stats: dict) -> dict:
    """corpus.json: sources with versions and licences, every file that trained, held out or was dropped."""
    by_source: dict[str, list[str]] = {}
    for f in train:
        by_source.setdefault(f.source, []).append(f.relpath)
    sources = [
        {"name": "stdlib", "version": f"Python {python_version()}", "licence": STDLIB_LICENCE},
        {"name": "pydoc_topics", "version": f"Python {python_version()}", "licence": "PSF-2.0"},
        *(package_record(name) for name in EXTRA_PACKAGES if name in by_source),
    ]
    return {
        "python_version": python_version(),
        "sources": sources,
        "stats": stats,
        "heldout_files": [f"stdlib/{f.relpath}" for f in heldout],
        "dropped_files": dropped,
        "train_files": {source: paths for source, paths in by_source.items()},
    }


def heldout_name(f: SourceFile) -> str:
    """A flat file name for a held-out module: json/decoder.py -> json__decoder.py."""
    return f.relpath.replace("/", "__")


def main(argv: list[str] | None = None) -> int:
    """Collect the sources, split them and write the corpus files under --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: .train)")
    parser.add_argument("--stdlib-only", action="store_true", help="leave out the extra site-packages")
    args = parser.parse_args(argv)

    files = stdlib_files()
    if not args.stdlib_only:
        for name, (_, _, cap) in EXTRA_PACKAGES.items():
            files += package_files(name, cap)
    train, heldout, dropped = split_corpus(files)
    topics = pydoc_topics()
    chats = chat_documents(train)

    out: Path = args.out
    (out / "heldout").mkdir(parents=True, exist_ok=True)
    for old in (out / "heldout").glob("*.py"):
        old.unlink()
    for f in heldout:
        (out / "heldout" / heldout_name(f)).write_text(f.text, encoding="utf-8")
    documents = [(f.source, f.text) for f in train]
    documents += [("pydoc_topics", text) for text in topics.values()]
    documents += [("chat", text) for text in chats]
    with open(out / "train.jsonl", "w", encoding="utf-8") as fh:
        for source, text in documents:
            fh.write(json.dumps({"source": source, "text": text}, ensure_ascii=False) + "\n")

    def size(source: str) -> int:
        return sum(len(text.encode("utf-8")) for s, text in documents if s == source)

    stats = {
        "train_bytes": {source: size(source) for source in sorted({s for s, _ in documents})},
        "train_documents": len(documents),
        "chat_pairs": len(chats),
        "pydoc_topics": len(topics),
        "heldout_files": len(heldout),
        "heldout_bytes": sum(len(f.text.encode("utf-8")) for f in heldout),
    }
    record = corpus_record(train, heldout, dropped, stats)
    (out / "corpus.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    total = sum(stats["train_bytes"].values())
    print(
        f"train: {len(documents)} documents, {total / 1e6:.1f} MB; held out: {len(heldout)} files, "
        f"{stats['heldout_bytes'] / 1e3:.0f} kB; {len(chats)} chat pairs; dropped {len(dropped)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
