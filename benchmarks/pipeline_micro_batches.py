"""Decode throughput of a pipeline-parallel engine with one batch in flight per stage vs stages taking turns.

    python benchmarks/pipeline_micro_batches.py --pp 2 --requests 32 --max-tokens 32 --repeats 3

Runs, each in a fresh engine: one device (no pipeline), `--pp` stages taking turns (`pipeline_micro_batches=1`)
and `--pp` stages with one batch in flight per stage (the default). Greedy, `--requests` 4-token prompts
decoding `--max-tokens` tokens each; prints output tokens per second (best of `--repeats`) and checks that
every variant gives the same tokens. On a CPU every rank is a process (gloo) with `--threads` torch threads.
Without `--model` it runs a 12-layer model of the demo's family (hidden 768; random weights from transformers,
seed 0, so that every rank loads the same checkpoint), written to a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO)

import torch  # noqa: E402

from forgellm import LLM, SamplingParams  # noqa: E402

VARIANTS = {
    "one device": {},
    "stages take turns": {"pipeline_micro_batches": 1},
    "one batch per stage": {"pipeline_micro_batches": 0},
}


def make_model(directory: Path) -> str:
    """A 12-layer, 768-wide checkpoint of the demo's architecture and tokenizer, random weights (seed 0)."""
    import transformers

    demo = REPO / "forgellm" / "assets" / "demo"
    config = json.loads((demo / "config.json").read_text())
    config.update(num_hidden_layers=12, hidden_size=768, intermediate_size=2048, num_attention_heads=12)
    config.update(num_key_value_heads=4)
    (directory / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(demo / name, directory / name)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(directory))
    model.save_pretrained(directory, safe_serialization=True)
    return str(directory)


def run_variant(args: argparse.Namespace, options: dict) -> tuple[float, list[list[int]]]:
    """(best output tokens per second, the tokens) of one engine configuration."""
    if options:
        options = {"pipeline_parallel_size": args.pp, **options}
    llm = LLM(args.model, load_format=args.load_format, dtype=args.dtype, max_num_seqs=args.requests, **options)
    try:
        params = SamplingParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True)
        prompts = [[5 + i, 6, 7, 8] for i in range(args.requests)]
        llm.generate(prompts[:2], params, use_tqdm=False)  # warm-up
        best, tokens = 0.0, []
        for _ in range(args.repeats):
            started = time.perf_counter()
            outputs = llm.generate(prompts, params, use_tqdm=False)
            elapsed = time.perf_counter() - started
            best = max(best, args.requests * args.max_tokens / elapsed)
            tokens = [list(o.outputs[0].token_ids) for o in outputs]
        return best, tokens
    finally:
        llm.engine.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="a checkpoint directory (default: a 12-layer model, made)")
    parser.add_argument("--load-format", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--pp", type=int, default=2)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process on a CPU")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scratch = None
    if args.model is None:
        scratch = tempfile.TemporaryDirectory()
        args.model = make_model(Path(scratch.name))
    results, reference = {}, None
    for name, options in VARIANTS.items():
        tok_s, tokens = run_variant(args, options)
        reference = reference or tokens
        results[name] = {"out_tok_s": round(tok_s, 1), "same_tokens": tokens == reference}
    print("| variant | output tok/s | same tokens as one device |\n| --- | ---: | --- |")
    for name, row in results.items():
        print(f"| {name} | {row['out_tok_s']:.1f} | {'yes' if row['same_tokens'] else 'NO'} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    if scratch is not None:
        scratch.cleanup()


if __name__ == "__main__":
    main()
