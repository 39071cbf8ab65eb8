"""Grammar compile time (cold and cached) for a 20-property JSON schema, and the host cost of filling the
token bitmask per step, on the demo's vocabulary and on a 128k one (Llama-3.1-8B's size).

    python benchmarks/grammar_compile.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO)

import torch  # noqa: E402

from forgellm.engine.llm_engine import DEMO_MODEL_DIR  # noqa: E402
from forgellm.hf.tokenizer import Tokenizer  # noqa: E402
from forgellm.structured.backend import GrammarBackend  # noqa: E402
from forgellm.structured.params import StructuredOutputsParams  # noqa: E402
from forgellm.structured.state import bitmask_width  # noqa: E402

KINDS = [
    {"type": "string", "maxLength": 20},
    {"type": "integer", "minimum": 0, "maximum": 1000},
    {"type": "number"},
    {"type": "boolean"},
    {"enum": ["a", "b", "c"]},
    {"type": "array", "items": {"type": "string"}, "maxItems": 4},
]


def schema(num_properties: int, salt: str = "") -> dict:
    properties = {f"field_{i}{salt}": KINDS[i % len(KINDS)] for i in range(num_properties)}
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    tokenizer = Tokenizer.from_dir(DEMO_MODEL_DIR)
    rows = []
    for vocab in (8192, 128256):  # the demo's; Llama-3.1-8B's size (padded ids past the tokenizer's)
        backend = GrammarBackend(tokenizer, vocab, [0])
        start = time.perf_counter()
        backend._get_compiler()
        setup = time.perf_counter() - start
        cold = []
        for r in range(args.repeats):  # a new schema each time: nothing cached
            params = StructuredOutputsParams(json=schema(20, salt=f"_{vocab}_{r}"))
            start = time.perf_counter()
            backend.compile(params)
            cold.append(time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(100):
            backend.compile(params)
        cached = (time.perf_counter() - start) / 100
        states = [backend.new_state(params) for _ in range(64)]
        bitmask = torch.full((64, bitmask_width(vocab)), -1, dtype=torch.int32)
        start = time.perf_counter()
        for _ in range(20):
            for row, state in enumerate(states):
                state.fill_bitmask(bitmask, row)
        fill64 = (time.perf_counter() - start) / 20
        row = {
            "vocab_size": vocab,
            "tokenizer_info_s": round(setup, 3),
            "compile_20_properties_cold_ms": round(1e3 * sorted(cold)[len(cold) // 2], 2),
            "compile_cached_us": round(1e6 * cached, 2),
            "bitmask_fill_64_rows_ms": round(1e3 * fill64, 3),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
