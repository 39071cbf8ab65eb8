"""Decode step time with every request JSON-schema constrained vs unconstrained, at the Llama-3.1-8B shape
(random weights, the demo's tokenizer padded to 128k ids), batch 1 and 64 (issue 14: <= 10% slower at
batch 1, <= 5% at batch 64), with asynchronous scheduling on (a constrained step's sampling is queued after
the step before is read, its forward pass before) and off. The schema is an array of integers too long to
finish within output_len, so every token is masked.

    python benchmarks/structured_step_time.py --out results.json
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO)

import torch  # noqa: E402

from forgellm.bench.latency import measure_latency  # noqa: E402
from forgellm.config import EngineConfig  # noqa: E402
from forgellm.engine.llm_engine import LLMEngine  # noqa: E402
from forgellm.models.presets import preset_dir  # noqa: E402

SCHEMA = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 999}, "minItems": 10000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default=None, help="default: preset llama-3.1-8b (random weights)")
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--async-modes", default="on,off", help="async_scheduling of the engines to compare")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument(
        "--iters", type=int, default=3, help="timed runs per row (host-bound rows vary by ~10%% run to run)"
    )
    args = parser.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    model = args.model or str(preset_dir("llama-3.1-8b"))
    rows = []
    for mode in args.async_modes.split(","):
        start = time.perf_counter()
        config = EngineConfig(
            model=model, load_format="dummy" if args.model is None else "auto", max_num_seqs=max(batch_sizes),
            async_scheduling=mode,
        )  # fmt: skip
        engine = LLMEngine(config)
        built = time.perf_counter() - start
        for batch in batch_sizes:
            for constrained in (False, True):
                result = measure_latency(
                    engine, batch, args.input_len, args.output_len, num_iters=args.iters, num_warmup=1,
                    temperature=0.0, disable_tqdm=True, structured_outputs={"json": SCHEMA} if constrained else None,
                )  # fmt: skip
                row = {
                    "async_scheduling": mode,
                    "batch": batch,
                    "constrained": constrained,
                    "itl_ms": round(result.itl_s.mean * 1e3, 3),
                    "output_tok_s": round(result.output_tok_s, 1),
                    "engine_build_s": round(built, 1),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
        del engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    plain = {(r["async_scheduling"], r["batch"]): r["itl_ms"] for r in rows if not r["constrained"]}
    for r in rows:
        r["itl_vs_unconstrained"] = round(r["itl_ms"] / plain[r["async_scheduling"], r["batch"]], 3)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    for r in rows:
        print(f"async {r['async_scheduling']:<3} batch {r['batch']:>3} "
              f"{'json schema' if r['constrained'] else 'unconstrained':<14} "
              f"{r['itl_ms']:>8} ms/token  x{r['itl_vs_unconstrained']}")  # fmt: skip


if __name__ == "__main__":
    main()
