"""Issue 12's accuracy table: `forgellm quantize` every scheme on the trained demo model (shipped calibration
sample), then perplexity and top-1 agreement with bf16 on the shipped held-out sample, through forgellm.

    python benchmarks/quantize_accuracy.py [--schemes a,b] [--extra NAME=DIR ...] [--num-samples 128] [--device cpu]

--extra scores checkpoints made elsewhere beside them, e.g. llmcompressor's GPTQ from
benchmarks/llmcompressor_gptq_demo.py. Figures go to benchmarks/results.jsonl; a table is printed last.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from forgellm import LLM  # noqa: E402
from forgellm.bench import report  # noqa: E402
from forgellm.eval import greedy_agreement, perplexity_report, score_texts  # noqa: E402
from forgellm.quantization.quantize.calibration_data import load_heldout_texts  # noqa: E402
from forgellm.quantization.quantize.export import QuantizeOptions, quantize_checkpoint  # noqa: E402

DEMO = REPO / "forgellm" / "assets" / "demo"
SCHEMES = ("fp8", "fp8-dynamic", "fp8-block", "w8a16", "w4a16-rtn", "w4a16-gptq", "w4a16-awq", "nvfp4", "nvfp4a16")


def score(model_dir: Path, texts: list[str], device: str, window: int):
    llm = LLM(str(model_dir), device=device, max_model_len=window + 1, cpu_kv_cache_gb=1.0)
    scores = score_texts(llm, texts, window=window)
    description = llm.engine.model_info.quantization or "bf16"
    del llm
    gc.collect()
    return scores, description


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schemes", default=",".join(SCHEMES))
    parser.add_argument("--extra", nargs="*", default=[], metavar="NAME=DIR")
    parser.add_argument("--num-samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--window", type=int, default=512, help="tokens per scored window")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    texts = load_heldout_texts()
    base, _ = score(DEMO, texts, args.device, args.window)
    base_ppl = perplexity_report(base).perplexity
    rows = [("bf16", "bf16", base_ppl, 0.0, 1.0, 0.0)]
    work = Path(tempfile.mkdtemp(prefix="quantize_accuracy_"))
    runs = [(s, None) for s in args.schemes.split(",") if s] + [tuple(e.split("=", 1)) for e in args.extra]
    for name, directory in runs:
        t0 = time.perf_counter()
        if directory is None:
            options = QuantizeOptions(
                num_samples=args.num_samples, seq_len=args.seq_len, device=args.device, progress=False
            )
            directory = quantize_checkpoint(DEMO, work / name, name, options)
        seconds = time.perf_counter() - t0
        scores, description = score(Path(directory), texts, args.device, args.window)
        ppl = perplexity_report(scores).perplexity
        rows.append((name, description, ppl, 100 * (ppl / base_ppl - 1), greedy_agreement(base, scores), seconds))
        print(f"{name}: {ppl:.4f} ({rows[-1][3]:+.2f}%)", flush=True)
    command = (
        f"python benchmarks/quantize_accuracy.py --num-samples {args.num_samples} --seq-len {args.seq_len} "
        f"--device {args.device} ({len(base.token_ids)} held-out tokens, windows of {args.window})"
    )
    if not args.no_record:
        commit = report.git_commit(REPO)
        records = [
            report.make_record(
                f"demo_quantize_ppl[{name}]",
                ppl,
                "perplexity",
                model="demo (trained)",
                gpu=args.device,
                commit=commit,
                command=command,
            )  # fmt: skip
            for name, _, ppl, *_ in rows
        ]
        report.append_results(REPO / "benchmarks" / "results.jsonl", records)
    table = [
        [name, desc, f"{ppl:.4f}", f"{change:+.2f}%", f"{agree:.2%}", f"{secs:.0f}"]
        for name, desc, ppl, change, agree, secs in rows
    ]
    print(report.format_table(["scheme", "loaded as", "perplexity", "vs bf16", "top-1 agreement", "quantize s"], table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
