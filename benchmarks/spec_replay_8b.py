"""Speculation at the Llama-3.1-8B shape (random weights) at a forced per-position acceptance a.

For each weight format, a plain engine and a speculating one (`--method eagle3`: an EAGLE-3 head of the
published Llama-3.1-8B layout, random weights; `draft_model`: one 8B-width decoder layer with the full
vocabulary, costlier than an EAGLE-3 head) run the same latency batches
at batch sizes 1, 8 and 32; the speculating engine drafts and verifies for real, then accepts each
draft position with probability a (spec_decode/forced_acceptance.py). Figures hold "at acceptance a".

    python benchmarks/spec_replay_8b.py --out results.json [--acceptance 0.8] [--k 5] [--formats bf16,fp8]
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


def profile_batch(engine: LLMEngine, batch: int, args: argparse.Namespace, out: Path, replay: bool) -> None:
    """One short batch under cProfile (host time by function) and torch.profiler (time by CUDA kernel)."""
    import cProfile
    import io
    import pstats

    from torch.profiler import ProfilerActivity, profile

    def run() -> None:
        measure_latency(
            engine,
            batch,
            args.input_len,
            48,
            num_iters=1,
            num_warmup=0,
            temperature=0.0,
            disable_tqdm=True,
            forced_acceptance=args.acceptance if replay else None,
        )

    profiler = cProfile.Profile()
    profiler.enable()
    run()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run()
    text.write(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30))
    out.write_text(text.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--acceptance", type=float, default=0.8)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--formats", default="bf16,fp8")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--method", default="draft_model", choices=["draft_model", "eagle3"])
    parser.add_argument(
        "--draft", default=None, help="default: preset llama-3.1-8b-1layer, or heads/llama-3.1-8b-eagle3"
    )
    parser.add_argument("--auto", action="store_true", help='speculate with disable_by_batch_size "auto"')
    parser.add_argument("--profile-batches", default="", help="also profile one batch of each size (host and CUDA)")
    args = parser.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.draft is None:
        heads = Path(preset_dir("llama-3.1-8b")).parent / "heads" / "llama-3.1-8b-eagle3"
        args.draft = str(heads if args.method == "eagle3" else preset_dir("llama-3.1-8b-1layer"))
    label = "EAGLE-3 head (8B shape)" if args.method == "eagle3" else "draft 1-layer"
    rows = []
    for fmt in args.formats.split(","):
        speculative = {"method": args.method, "model": args.draft, "num_speculative_tokens": args.k}
        if args.auto:
            speculative["disable_by_batch_size"] = "auto"
        for spec in (None, speculative):
            start = time.perf_counter()
            config = EngineConfig(
                model=str(preset_dir("llama-3.1-8b")),
                load_format="dummy",
                quantization=None if fmt == "bf16" else fmt,
                max_model_len=4096,
                max_num_seqs=max(batch_sizes),
                speculative_config=spec,
            )
            engine = LLMEngine(config)
            built = time.perf_counter() - start
            for batch in batch_sizes:
                result = measure_latency(
                    engine,
                    batch,
                    args.input_len,
                    args.output_len,
                    num_iters=2 if batch == 1 else 1,
                    num_warmup=1,
                    temperature=0.0,
                    disable_tqdm=True,
                    forced_acceptance=None if spec is None else args.acceptance,
                )
                row = {
                    "format": fmt,
                    "speculation": "off"
                    if spec is None
                    else f"{label} k={args.k}{' auto' if args.auto else ''} at acceptance {args.acceptance}",
                    "batch": batch,
                    "output_tok_s": round(result.output_tok_s, 1),
                    "tpot_ms": round(result.itl_s.mean * 1e3, 3),
                    "ttft_ms": round(result.ttft_s.mean * 1e3, 2),
                    "speculation_stats": result.speculation,
                    "governor": None if spec is None or not args.auto else engine.core.spec_decoder.governor.summary(),
                    "engine_build_s": round(built, 1),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
            for batch in [int(b) for b in args.profile_batches.split(",") if b]:
                label = f"{fmt}_{'plain' if spec is None else 'spec'}_b{batch}"
                profile_batch(engine, batch, args, Path(args.out).parent / f"profile_{label}.txt", spec is not None)
            del engine
            gc.collect()
            torch.cuda.empty_cache()
    plain = {(r["format"], r["batch"]): r["output_tok_s"] for r in rows if r["speculation"] == "off"}
    for r in rows:
        r["speedup"] = round(r["output_tok_s"] / plain[(r["format"], r["batch"])], 3)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"{'format':<6} {'batch':>5} {'speculation':<40} {'tok/s':>9} {'speedup':>8} {'tok/step':>8} {'draft%':>7}")
    for r in rows:
        s = r["speculation_stats"] or {}
        print(
            f"{r['format']:<6} {r['batch']:>5} {r['speculation']:<40} {r['output_tok_s']:>9} {r['speedup']:>8} "
            f"{s.get('tokens_per_verify_step', 0):>8.2f} {100 * s.get('draft_time_share', 0):>6.1f}%"
        )


if __name__ == "__main__":
    main()
