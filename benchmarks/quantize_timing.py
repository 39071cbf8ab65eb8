"""Issue 12's `forgellm quantize` timing on one GPU: wall time and peak GPU memory of quantizing a
Llama-3.1-8B-shaped checkpoint of random weights, then the output's batch-1 decode speed in forgellm.

    python benchmarks/quantize_timing.py --schemes fp8,w4a16-gptq [--num-samples 128 --seq-len 512] [--no-record]
    python benchmarks/quantize_timing.py --preset tiny-llama --device cpu --schemes fp8,w4a16-gptq --group-size 32 \
        --num-samples 4 --seq-len 64 --no-record

The random checkpoint (bf16, N(0, 0.02), the demo model's tokenizer) is written to --work first. The
second line is the CPU smoke test of this script. Figures go to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from forgellm.bench import engine_setup, report  # noqa: E402
from forgellm.bench.latency import measure_latency  # noqa: E402
from forgellm.config import EngineConfig  # noqa: E402
from forgellm.hf.config import load_model_config  # noqa: E402
from forgellm.models.presets import preset_dir  # noqa: E402
from forgellm.quantization.quantize.export import QuantizeOptions, quantize_checkpoint  # noqa: E402
from forgellm.quantization.quantize.shard_writer import ShardWriter  # noqa: E402

DEMO = REPO / "forgellm" / "assets" / "demo"
TARGET_SECONDS = {"fp8": 120.0, "w4a16-gptq": 900.0}


def random_checkpoint(preset: str, out: Path, device: str) -> Path:
    """A Hugging Face Llama checkpoint of `preset`'s shape with seeded random bf16 weights."""
    arch = load_model_config(preset_dir(preset))
    raw = json.loads((preset_dir(preset) / "config.json").read_text())
    h, inter, d = arch.hidden_size, arch.intermediate_size, arch.head_dim
    q, kv = arch.num_attention_heads * d, arch.num_key_value_heads * d
    shapes = {"model.embed_tokens.weight": (arch.vocab_size, h), "model.norm.weight": (h,)}
    if not arch.tie_word_embeddings:
        shapes["lm_head.weight"] = (arch.vocab_size, h)
    for i in range(arch.num_hidden_layers):
        p = f"model.layers.{i}"
        shapes |= {
            f"{p}.self_attn.q_proj.weight": (q, h), f"{p}.self_attn.k_proj.weight": (kv, h),
            f"{p}.self_attn.v_proj.weight": (kv, h), f"{p}.self_attn.o_proj.weight": (h, q),
            f"{p}.mlp.gate_proj.weight": (inter, h), f"{p}.mlp.up_proj.weight": (inter, h),
            f"{p}.mlp.down_proj.weight": (h, inter), f"{p}.input_layernorm.weight": (h,),
            f"{p}.post_attention_layernorm.weight": (h,),
        }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(device=device).manual_seed(0)
    writer = ShardWriter(out)
    for name, shape in shapes.items():
        if len(shape) == 1:
            tensor = torch.ones(shape, dtype=torch.bfloat16)
        else:
            tensor = torch.empty(shape, device=device, dtype=torch.bfloat16).normal_(0, 0.02, generator=generator).cpu()
        writer.add(name, tensor)
    writer.close()
    (out / "config.json").write_text(json.dumps({**raw, "torch_dtype": "bfloat16"}, indent=2))
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(DEMO / file, out / file)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="llama-3.1-8b")
    parser.add_argument("--schemes", default="fp8,w4a16-gptq")
    parser.add_argument("--num-samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--group-size", type=int, default=None, help="int schemes (default: the scheme's)")
    parser.add_argument("--work", default="/tmp/quantize_timing")
    parser.add_argument("--no-bench", action="store_true", help="skip the decode benchmark of the outputs")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results.jsonl"), help="JSON lines to append to")
    args = parser.parse_args()
    logging.basicConfig(format="%(message)s")
    logging.getLogger("forgellm").setLevel(logging.INFO)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    source = random_checkpoint(args.preset, work / "source", args.device)
    print(f"random checkpoint written in {time.perf_counter() - t0:.0f} s", flush=True)
    cuda = args.device.startswith("cuda")
    figures = []
    for scheme in args.schemes.split(","):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        options = QuantizeOptions(
            group_size=args.group_size, num_samples=args.num_samples, seq_len=args.seq_len, device=args.device
        )
        t0 = time.perf_counter()
        out = quantize_checkpoint(source, work / scheme, scheme, options)
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        cmd = (
            f"forgellm quantize MODEL -o OUT --scheme {scheme} --num-samples {args.num_samples} "
            f"--seq-len {args.seq_len} ({args.preset}, random bf16 weights)"
        )
        print(f"== {scheme}: {seconds:.1f} s, peak GPU memory {peak:.2f} GiB", flush=True)
        figures += [(f"quantize_{scheme}_s", seconds, "s", cmd), (f"quantize_{scheme}_peak_gib", peak, "GiB", cmd)]
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        if not args.no_bench:
            config = EngineConfig(model=str(out), device=args.device, max_model_len=1024, max_num_seqs=8)
            engine = engine_setup.build_engine(config)
            result = measure_latency(engine, 1, 128, 256, 3, num_warmup=1, disable_tqdm=True)
            bench = f"forgellm bench latency --model OUT({scheme}) --batch-size 1 --input-len 128 --output-len 256"
            figures.append((f"decode_b1_{scheme}_checkpoint_tok_s", result.decode_tok_s, "tok/s", bench))
            print(f"== {scheme} output: decode batch 1 {result.decode_tok_s:.1f} tok/s", flush=True)
            del engine
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
        shutil.rmtree(out)
    if not args.no_record:
        gpu, commit = engine_setup.device_name(args.device), report.git_commit(REPO)
        model = f"{args.preset} (random weights)"
        records = [
            report.make_record(m, v, u, model=model, gpu=gpu, commit=commit, command=c) for m, v, u, c in figures
        ]
        report.append_results(args.results, records)
    rows = [
        [m, report.fmt(v), u, f"<= {TARGET_SECONDS[m[9:-2]]:g}" if m[9:-2] in TARGET_SECONDS and u == "s" else ""]
        for m, v, u, _ in figures
    ]
    print(report.format_table(["metric", "value", "unit", "target"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
