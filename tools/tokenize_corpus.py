"""Tokenize the corpus into compact uint16 token files for tools/train_demo.py.

    python tools/tokenize_corpus.py [--corpus .train] [--tokenizer .train/assets/demo]

Writes --corpus/train_tokens.npy.xz (training documents in a seeded shuffled order, each followed by
<|endoftext|>) and --corpus/heldout_tokens.npy.xz (the held-out files, likewise), each an
xz-compressed .npy of uint16, small enough to travel to the GPU machine.
"""

from __future__ import annotations

import argparse
import json
import lzma
import random
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

REPO = Path(__file__).resolve().parent.parent
SEED = 1234
EOS_ID = 0


def encode_documents(tokenizer: Tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Each text's ids followed by <|endoftext|>, as uint16 arrays."""
    if tokenizer.get_vocab_size() > np.iinfo(np.uint16).max:
        raise SystemExit("vocabulary too large for uint16 token files")
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    return [np.array(e.ids + [EOS_ID], dtype=np.uint16) for e in encodings]


def save_xz(path: Path, array: np.ndarray) -> None:
    """Write `array` as an xz-compressed .npy file."""
    with lzma.open(path, "wb", preset=6) as fh:
        np.save(fh, array)


def main(argv: list[str] | None = None) -> int:
    """Tokenize train.jsonl and heldout/ under --corpus."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=REPO / ".train", help="folder made by build_corpus.py")
    parser.add_argument("--tokenizer", type=Path, default=None, help="folder with tokenizer.json")
    args = parser.parse_args(argv)
    corpus: Path = args.corpus
    tokenizer_dir = args.tokenizer or corpus / "assets" / "demo"
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))

    with open(corpus / "train.jsonl", encoding="utf-8") as fh:
        docs = [json.loads(line) for line in fh]
    # Shuffle whole documents so every stretch of the token stream mixes sources and chat pairs.
    random.Random(SEED).shuffle(docs)
    train_docs = encode_documents(tokenizer, [d["text"] for d in docs])
    train = np.concatenate(train_docs)
    heldout_files = sorted((corpus / "heldout").glob("*.py"))
    heldout = np.concatenate(encode_documents(tokenizer, [p.read_text(encoding="utf-8") for p in heldout_files]))
    save_xz(corpus / "train_tokens.npy.xz", train)
    save_xz(corpus / "heldout_tokens.npy.xz", heldout)

    by_source: dict[str, int] = {}
    for doc, ids in zip(docs, train_docs):
        by_source[doc["source"]] = by_source.get(doc["source"], 0) + len(ids)
    stats = {"train_tokens": int(train.size), "heldout_tokens": int(heldout.size), "train_tokens_by_source": by_source}
    (corpus / "token_stats.json").write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")
    size = (corpus / "train_tokens.npy.xz").stat().st_size
    print(f"train: {train.size / 1e6:.2f}M tokens ({size / 1e6:.1f} MB xz); held out: {heldout.size} tokens")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
