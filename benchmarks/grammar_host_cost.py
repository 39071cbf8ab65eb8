"""Host cost of a batch's grammars per decode step: accepting one token and filling one bitmask row each.

    python benchmarks/grammar_host_cost.py --batch-size 64 --steps 100

The demo tokenizer padded to Llama-3's 128,256 ids, `structured_step_time.py`'s JSON schema (or
`--schema object` for an object with strings), one matcher per row advanced along a valid token sequence.
Times per step, in ms: accepting then filling in series; on N Python threads (GrammarPool "threads", the
two phases apart, as the engine ran them until now); on N threads with each row accepted and filled in
one task (`fused`); and xgrammar's batch API (`batch_accept_token`, `BatchGrammarMatcher` fill). Also how
much a pure-Python loop on the calling thread slows down while the pool works (1.0 = the GIL is free).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO)

import torch  # noqa: E402

from forgellm.hf.tokenizer import Tokenizer  # noqa: E402
from forgellm.structured.backend import GrammarBackend  # noqa: E402
from forgellm.structured.params import StructuredOutputsParams  # noqa: E402
from forgellm.structured.state import bitmask_width  # noqa: E402

VOCAB = 128256
SCHEMAS = {
    "array": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 999}, "minItems": 10000},
    "object": {
        "type": "object",
        "properties": {f"field_{i}": {"type": "string"} for i in range(20)},
        "required": [f"field_{i}" for i in range(20)],
    },
}


def valid_tokens(backend: GrammarBackend, params: StructuredOutputsParams, length: int, seed: int) -> list[int]:
    """A random token sequence the grammar accepts (drawn from each step's mask, never a stop token)."""
    rng = random.Random(seed)
    state = backend.new_state(params)
    row = torch.full((1, bitmask_width(VOCAB)), -1, dtype=torch.int32)
    bits = torch.arange(32, dtype=torch.int32)
    stops = set(backend.stop_token_ids)
    tokens: list[int] = []
    for _ in range(length):
        row.fill_(-1)
        state.matcher.fill_next_token_bitmask(row, 0)
        allowed = ((row[0].unsqueeze(1) >> bits) & 1).flatten().nonzero().flatten().tolist()
        choices = [t for t in allowed if t not in stops and t < backend.tokenizer.vocab_size]
        token = rng.choice(choices)
        assert state.matcher.accept_token(token)
        tokens.append(token)
    return tokens


def python_loop(n: int = 300_000) -> float:
    """Seconds for a fixed pure-Python loop (the calling thread's share of the GIL)."""
    start = time.perf_counter()
    total = 0
    for i in range(n):
        total += i
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", default="1,2,4,8,16")
    parser.add_argument("--schema", choices=sorted(SCHEMAS), default="array")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    tokenizer = Tokenizer.from_dir(REPO / "forgellm/assets/demo")
    backend = GrammarBackend(tokenizer, VOCAB, [tokenizer.eos_token_id])
    params = StructuredOutputsParams(json=SCHEMAS[args.schema])
    batch, steps = args.batch_size, args.steps
    sequences = [valid_tokens(backend, params, steps, seed) for seed in range(4)]
    bitmask = torch.full((batch, bitmask_width(VOCAB)), -1, dtype=torch.int32)

    def fresh() -> list:
        return [backend.new_state(params).matcher for _ in range(batch)]

    def accept_rows(matchers: list, rows: range, step: int) -> None:
        for row in rows:
            matchers[row].accept_token(sequences[row % 4][step])

    def fill_rows(matchers: list, rows: range) -> None:
        for row in rows:
            matchers[row].fill_next_token_bitmask(bitmask, row)

    def fused_rows(matchers: list, rows: range, step: int) -> None:
        for row in rows:
            matchers[row].accept_token(sequences[row % 4][step])
            matchers[row].fill_next_token_bitmask(bitmask, row)

    results = []

    def record(name: str, threads: int, run) -> None:  # noqa: ANN001
        matchers = fresh()
        start = time.perf_counter()
        for step in range(steps):
            run(matchers, step)
        per_step = (time.perf_counter() - start) * 1e3 / steps
        row = {
            "mode": name,
            "threads": threads,
            "batch": batch,
            "schema": args.schema,
            "ms_per_step": round(per_step, 3),
        }
        results.append(row)
        print(json.dumps(row), flush=True)

    everything = range(batch)
    record("accept only, serial", 1, lambda m, s: accept_rows(m, everything, s))
    record("accept + fill, serial", 1, lambda m, s: (accept_rows(m, everything, s), fill_rows(m, everything)))
    for threads in [int(t) for t in args.threads.split(",") if int(t) > 1]:
        pool = ThreadPoolExecutor(threads)
        slices = [range(i, batch, threads) for i in range(threads)]

        def apart(m: list, s: int, pool=pool, slices=slices) -> None:  # noqa: ANN001
            for future in [pool.submit(accept_rows, m, rows, s) for rows in slices]:
                future.result()
            for future in [pool.submit(fill_rows, m, rows) for rows in slices]:
                future.result()

        def fused(m: list, s: int, pool=pool, slices=slices) -> None:  # noqa: ANN001
            for future in [pool.submit(fused_rows, m, rows, s) for rows in slices]:
                future.result()

        def accept_only(m: list, s: int, pool=pool, slices=slices) -> None:  # noqa: ANN001
            for future in [pool.submit(accept_rows, m, rows, s) for rows in slices]:
                future.result()

        record("accept only, threads", threads, accept_only)
        record("accept, then fill, threads", threads, apart)
        record("accept + fill fused, threads", threads, fused)
        pool.shutdown()
    import xgrammar

    for threads in [int(t) for t in args.threads.split(",")]:
        batch_matcher = xgrammar.BatchGrammarMatcher(max_threads=threads)

        def batch_api(m: list, s: int, batch_matcher=batch_matcher) -> None:  # noqa: ANN001
            xgrammar.BatchGrammarMatcher.batch_accept_token(m, [sequences[r % 4][s] for r in everything])
            batch_matcher.batch_fill_next_token_bitmask(m, bitmask)

        record("xgrammar batch accept + batch fill", threads, batch_api)
    # The GIL: a Python loop here while 8 threads accept and fill continuously.
    alone = min(python_loop() for _ in range(3))
    matchers, stop = fresh(), threading.Event()

    def busy(rows: range) -> None:
        step = 0
        while not stop.is_set():
            fused_rows(matchers, rows, step % steps)
            step += 1
            if step % steps == 0:
                for row in rows:
                    matchers[row].reset()

    workers = [threading.Thread(target=busy, args=(range(i, batch, 8),)) for i in range(8)]
    for worker in workers:
        worker.start()
    time.sleep(0.05)
    contended = min(python_loop() for _ in range(3))
    stop.set()
    for worker in workers:
        worker.join()
    gil = {"mode": "python loop slowdown while 8 threads accept + fill", "ratio": round(contended / alone, 2)}
    results.append(gil)
    print(json.dumps(gil), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
