"""Where a speculative step's time goes at batch 1 on the demo (host-side cProfile), and where greedy
speculation first departs from plain decoding (with the plain run's top-2 logit margin there).

    python benchmarks/profile_spec_decode.py --out DIR
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO)

import torch  # noqa: E402

from benchmarks.spec_decode_demo import DRAFT, heldout_prompts  # noqa: E402
from forgellm import LLM, SamplingParams  # noqa: E402


def divergences(dtype: str, spec: dict, prompts: list, chat: bool) -> list:
    plain = LLM(device="cuda", dtype=dtype, max_model_len=2048)
    fast = LLM(device="cuda", dtype=dtype, max_model_len=2048, speculative_config=spec)
    params = SamplingParams(temperature=0.0, max_tokens=96, logprobs=2)
    plain_params = params
    spec_params = SamplingParams(temperature=0.0, max_tokens=96)
    found = []

    def run(llm: LLM, prompt: object, params: SamplingParams) -> list:
        return llm.chat(prompt, params, use_tqdm=False) if chat else llm.generate([prompt], params, use_tqdm=False)

    for i, prompt in enumerate(prompts):
        a = run(plain, prompt, plain_params)[0].outputs[0]
        b = run(fast, prompt, spec_params)[0].outputs[0]
        if list(a.token_ids) == list(b.token_ids):
            continue
        pos = next(
            (j for j, (x, y) in enumerate(zip(a.token_ids, b.token_ids)) if x != y),
            min(len(a.token_ids), len(b.token_ids)),
        )
        entry = a.logprobs[pos] if pos < len(a.logprobs) else {}
        top = sorted(((v.logprob if hasattr(v, "logprob") else v) for v in entry.values()), reverse=True)
        margin = top[0] - top[1] if len(top) > 1 else None
        found.append(
            {
                "prompt": i,
                "position": pos,
                "plain": a.token_ids[pos] if pos < len(a.token_ids) else None,
                "spec": b.token_ids[pos] if pos < len(b.token_ids) else None,
                "plain_logprob_margin": margin,
            }
        )
    del plain, fast
    torch.cuda.empty_cache()
    return found


def profile(label: str, spec: dict | None, prompts: list, out: Path) -> dict:
    llm = LLM(device="cuda", max_model_len=2048, speculative_config=spec)
    params = SamplingParams(temperature=0.0, max_tokens=96, ignore_eos=True)
    llm.generate(prompts[:1], params, use_tqdm=False)
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for p in prompts:
        llm.generate([p], params, use_tqdm=False)
    profiler.disable()
    seconds = time.perf_counter() - start
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(45)
    stream2 = io.StringIO()
    pstats.Stats(profiler, stream=stream2).sort_stats("tottime").print_stats(30)
    (out / f"profile_{label}.txt").write_text(stream.getvalue() + "\n\n" + stream2.getvalue())
    stats = llm.engine.stats()
    return {
        "label": label,
        "seconds": seconds,
        "tokens": 96 * len(prompts),
        "spec_steps": stats.num_spec_steps,
        "accepted": stats.num_accepted_tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    chats, codes = heldout_prompts(6, 6)
    ngram = {"method": "ngram", "num_speculative_tokens": 3}
    draft = {"method": "draft_model", "model": str(DRAFT), "num_speculative_tokens": 3}
    results = {
        "profiles": [
            profile("plain", None, codes[:3], out),
            profile("ngram", ngram, codes[:3], out),
            profile("draft", draft, codes[:3], out),
        ]
    }
    print(json.dumps(results["profiles"]), flush=True)
    for dtype in ("float32", "bfloat16"):
        for name, prompts, chat in (("chat", chats, True), ("code", codes, False)):
            results[f"ngram_{dtype}_{name}"] = divergences(dtype, ngram, prompts, chat)
            print(f"ngram_{dtype}_{name}", json.dumps(results[f"ngram_{dtype}_{name}"]), flush=True)
    (out / "profile_spec.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
