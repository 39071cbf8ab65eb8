"""Soak test: continuous arrivals of mixed lengths for a fixed time; GPU memory must stay flat.

    python benchmarks/soak.py --model-config llama-3.1-8b --seconds 300

Requests arrive as a Poisson process with random prompt (16..2048) and output (8..512) lengths,
random sampling settings, some aborted mid-flight and some invalid (each must raise a typed error
and disturb nothing). Every 15 s a row shows allocated/reserved GPU memory, KV-cache usage and
counts. Exits non-zero on any unexpected error, a wrong output length, leaked KV blocks at the
end, or allocated memory growing by more than 1% between the first and the last sample.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from forgellm import LLM, ForgeLLMError, SamplingParams  # noqa: E402
from forgellm.models.presets import preset_dir  # noqa: E402


def random_params(rng: random.Random) -> SamplingParams:
    greedy = rng.random() < 0.5
    return SamplingParams(
        temperature=0.0 if greedy else rng.choice([0.7, 1.0]),
        top_p=rng.choice([1.0, 0.9]),
        top_k=rng.choice([-1, 50]),
        max_tokens=rng.randint(8, 512),
        ignore_eos=True,
        detokenize=False,
        seed=rng.choice([None, rng.randint(0, 1000)]),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-config", default="llama-3.1-8b")
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--rate", type=float, default=12.0, help="mean arrivals per second")
    parser.add_argument("--max-model-len", type=int, default=4096)
    args = parser.parse_args()
    rng = random.Random(0)
    llm = LLM(
        str(preset_dir(args.model_config)), load_format="dummy", dtype="bfloat16", max_model_len=args.max_model_len
    )
    engine = llm.engine
    vocab = engine.arch.vocab_size
    expected: dict[str, int] = {}
    aborted: set[str] = set()
    done = errors = invalid = 0
    samples: list[tuple[float, int, int]] = []
    start = last_sample = time.monotonic()
    next_arrival = start
    counter = 0
    print(
        f"{'t (s)':>6} {'alloc GiB':>10} {'reserved GiB':>13} {'kv use':>7} {'running':>8} {'waiting':>8} {'done':>6}"
    )
    while time.monotonic() - start < args.seconds or engine.has_unfinished_requests():
        now = time.monotonic()
        while now - start < args.seconds and now >= next_arrival:
            counter += 1
            request_id = f"r{counter}"
            params = random_params(rng)
            prompt = [rng.randrange(vocab) for _ in range(rng.randint(16, min(2048, args.max_model_len - 520)))]
            if counter % 50 == 0:  # an invalid request: must raise and change nothing
                try:
                    engine.add_request(request_id, prompt + [vocab + 5], params)
                    errors += 1
                except ForgeLLMError:
                    invalid += 1
            else:
                engine.add_request(request_id, prompt, params)
                expected[request_id] = params.max_tokens
                if counter % 17 == 0:
                    aborted.add(request_id)
            next_arrival += rng.expovariate(args.rate)
        for request_id in [r for r in aborted if r in expected and rng.random() < 0.05]:
            engine.abort_request(request_id)
            expected.pop(request_id)
        for out in engine.step():
            if out.finished:
                done += 1
                want = expected.pop(out.request_id, None)
                if want is not None and len(out.outputs[0].token_ids) != want:
                    errors += 1
                    print(f"wrong length for {out.request_id}: {len(out.outputs[0].token_ids)} != {want}")
        if now - last_sample >= 15:
            last_sample = now
            stats = engine.stats()
            on_gpu = torch.cuda.is_available()
            alloc = torch.cuda.memory_allocated() if on_gpu else 1
            reserved = torch.cuda.memory_reserved() if on_gpu else 1
            samples.append((now - start, alloc, reserved))
            print(
                f"{now - start:6.0f} {alloc / 2**30:10.2f} {reserved / 2**30:13.2f} {stats.kv_cache_usage:7.2f} "
                f"{stats.num_running:8d} {stats.num_waiting:8d} {done:6d}",
                flush=True,
            )
    kv = engine.core.kv_cache
    leaked = kv.num_blocks - kv.num_free_blocks
    growth = (samples[-1][1] - samples[0][1]) / samples[0][1] if len(samples) > 1 else 0.0
    ok = errors == 0 and leaked == 0 and growth <= 0.01 and not expected
    print(
        f"\nsoak {args.seconds:.0f} s: {counter} arrivals, {done} finished, {len(aborted)} marked for abort, "
        f"{invalid} invalid rejected, {errors} errors, {leaked} leaked blocks, allocated memory growth "
        f"{growth * 100:+.3f}% -> {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
