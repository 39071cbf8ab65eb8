"""Speculative decoding on the demo model at batch 1: acceptance and speed-up over plain decoding.

Prompts come from the demo's held-out files (never trained on): chat questions about their functions
("What does `sched.scheduler.enter` do?", answered in the demo's chat format) and code continuations
(the first lines of each held-out module). Every request runs alone (batch 1), greedy and at
temperature 0.8, plain and with each proposer; greedy outputs must equal plain decoding's.

    python benchmarks/spec_decode_demo.py --out results.json [--methods ngram,draft_model,eagle3] [--k 3,5]
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO)  # benchmarks/kernels.py must not shadow the `kernels` package transformers probes

from forgellm import LLM, SamplingParams  # noqa: E402
from forgellm.engine.llm_engine import DEMO_MODEL_DIR  # noqa: E402

HELDOUT = REPO / "forgellm" / "assets" / "calibration" / "heldout_eval_sample.jsonl.gz"
DRAFT = DEMO_MODEL_DIR.parent / "demo-draft"
EAGLE3 = DEMO_MODEL_DIR.parent / "demo-eagle3"


def heldout_prompts(num_chat: int, num_code: int, code_chars: int = 600) -> tuple[list, list[str]]:
    """Chat conversations about held-out functions, and the openings of held-out modules."""
    files = [json.loads(line) for line in gzip.open(HELDOUT, "rt")]
    chats, codes = [], []
    for entry in files:
        module = entry["source"].removeprefix("stdlib/").removesuffix(".py").replace("/", ".")
        try:
            tree = ast.parse(entry["text"])
        except SyntaxError:
            continue
        names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name[0] != "_"]
        for name in names[:2]:
            chats.append([{"role": "user", "content": f"What does `{module}.{name}` do?"}])
        codes.append(entry["text"][:code_chars])
    return chats[:num_chat], codes[:num_code]


def run_one(llm: LLM, prompts: list, params: SamplingParams, chat: bool) -> tuple[float, int, list]:
    """Each prompt alone (batch 1); returns (seconds, output tokens, token ids per prompt)."""
    seconds, tokens, outputs = 0.0, 0, []
    for prompt in prompts:
        start = time.perf_counter()
        out = llm.chat(prompt, params, use_tqdm=False) if chat else llm.generate([prompt], params, use_tqdm=False)
        seconds += time.perf_counter() - start
        ids = out[0].outputs[0].token_ids
        tokens += len(ids)
        outputs.append(list(ids))
    return seconds, tokens, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--methods", default="ngram,draft_model,eagle3")
    parser.add_argument("--k", default="3,5")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default=None, help="default: the checkpoint's (bfloat16)")
    args = parser.parse_args()
    chats, codes = heldout_prompts(args.num_prompts, args.num_prompts)
    sets = {"chat": (chats, True), "code": (codes, False)}
    temps = {"greedy": SamplingParams(temperature=0.0, max_tokens=args.max_tokens)}
    temps["t0.8"] = SamplingParams(temperature=0.8, top_p=0.95, seed=1, max_tokens=args.max_tokens)
    configs = [("plain", None)]
    for method in args.methods.split(","):
        for k in (int(k) for k in args.k.split(",")):
            spec = {"method": method, "num_speculative_tokens": k}
            if method in ("draft_model", "eagle3"):
                spec["model"] = str(DRAFT if method == "draft_model" else EAGLE3)
            configs.append((f"{method} k={k}", spec))
    rows, reference = [], {}
    for label, spec in configs:
        llm = LLM(
            device=args.device,
            max_model_len=2048,
            speculative_config=spec,
            **({"dtype": args.dtype} if args.dtype else {}),
        )
        run_one(llm, chats[:2], temps["greedy"], True)  # warm-up past start-up's own
        for set_name, (prompts, chat) in sets.items():
            for temp_name, params in temps.items():
                before = llm.engine.stats()
                seconds, tokens, outputs = run_one(llm, prompts, params, chat)
                after = llm.engine.stats()
                drafted = after.num_draft_tokens - before.num_draft_tokens
                accepted = after.num_accepted_tokens - before.num_accepted_tokens
                steps = after.num_spec_steps - before.num_spec_steps
                key = (set_name, temp_name)
                same = None
                if temp_name == "greedy":
                    if spec is None:
                        reference[key] = outputs
                    else:
                        same = outputs == reference[key]
                row = {
                    "config": label,
                    "prompts": set_name,
                    "sampling": temp_name,
                    "tokens": tokens,
                    "seconds": round(seconds, 3),
                    "tok_per_s": round(tokens / seconds, 1),
                    "drafted": drafted,
                    "accepted": accepted,
                    "acceptance_rate": round(accepted / drafted, 3) if drafted else None,
                    "tokens_per_verify_step": round(1 + accepted / steps, 2) if steps else None,
                    "greedy_equal_plain": same,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
        del llm
    base = {(r["prompts"], r["sampling"]): r["tok_per_s"] for r in rows if r["config"] == "plain"}
    for r in rows:
        r["speedup"] = round(r["tok_per_s"] / base[(r["prompts"], r["sampling"])], 2)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"{'config':<18} {'prompts':<6} {'sampling':<8} {'tok/s':>8} {'speedup':>8} {'acc':>6} {'tok/step':>8} same")
    for r in rows:
        print(
            f"{r['config']:<18} {r['prompts']:<6} {r['sampling']:<8} {r['tok_per_s']:>8} {r['speedup']:>8} "
            f"{r['acceptance_rate'] or '-':>6} {r['tokens_per_verify_step'] or '-':>8} {r['greedy_equal_plain']}"
        )
    print("median tok/s plain:", statistics.median(base.values()))


if __name__ == "__main__":
    main()
