"""Python time per engine step of Scheduler.schedule() + update_from_output(), without a model.

    python benchmarks/scheduler_step.py [--requests 256] [--prompt-len 512] [--steps 1000] [--json]

All requests are prefilled first (not timed); then each timed step decodes one token per request.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from forgellm.engine.request import Request
from forgellm.sampling_params import SamplingParams
from forgellm.scheduling.kv_cache import KVCacheManager
from forgellm.scheduling.scheduler import Scheduler


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--no-prefix-caching", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser.parse_args()


def build(args: argparse.Namespace) -> Scheduler:
    """A scheduler with every request prefilled and decoding, and blocks for all the timed steps."""
    # Early requests decode while later ones prefill: leave room for those extra tokens too.
    max_len = 2 * (args.prompt_len + args.steps)
    blocks_per_request = -(-max_len // args.block_size)
    kv = KVCacheManager(args.requests * blocks_per_request, args.block_size, not args.no_prefix_caching)
    scheduler = Scheduler(kv, args.requests, max(8192, args.requests), max_len + 1)
    params = SamplingParams(max_tokens=None, ignore_eos=True)
    for index in range(args.requests):
        # Distinct prompts: no prefix sharing, so every request hashes its own blocks.
        prompt = [(index * 7919 + position) % 32000 for position in range(args.prompt_len)]
        scheduler.add_request(Request(f"r{index}", prompt, params, max_tokens=max_len - args.prompt_len))
    sampled = {f"r{index}": 1 for index in range(args.requests)}
    while any(r.num_computed_tokens < r.num_prompt_tokens for r in [*scheduler.running, *scheduler.waiting]):
        scheduler.update_from_output(scheduler.schedule(), sampled)
    return scheduler


def measure(scheduler: Scheduler, steps: int, num_requests: int) -> dict[str, float]:
    """Time `steps` decode steps; return per-step statistics in milliseconds."""
    sampled = {f"r{index}": 1 for index in range(num_requests)}  # the "model": built once, reused
    times = []
    clock = time.perf_counter
    for _ in range(steps):
        start = clock()
        out = scheduler.schedule()
        scheduler.update_from_output(out, sampled)
        times.append(clock() - start)
        assert len(out.scheduled) == num_requests and out.num_batched_tokens == num_requests
    times_ms = [t * 1e3 for t in times]
    return {
        "mean_ms": statistics.fmean(times_ms),
        "median_ms": statistics.median(times_ms),
        "p99_ms": sorted(times_ms)[int(0.99 * (len(times_ms) - 1))],
        "max_ms": max(times_ms),
        "us_per_request": statistics.fmean(times_ms) * 1e3 / num_requests,
    }


def main() -> None:
    """Build, measure, report."""
    args = parse_args()
    scheduler = build(args)
    result = measure(scheduler, args.steps, args.requests)
    setup = {
        "requests": args.requests,
        "prompt_len": args.prompt_len,
        "block_size": args.block_size,
        "steps": args.steps,
        "prefix_caching": not args.no_prefix_caching,
    }
    if args.json:
        print(json.dumps({**setup, **result}))
        return
    print(" ".join(f"{key}={value}" for key, value in setup.items()))
    print(f"{'metric':<16}{'value':>10}")
    for key, value in result.items():
        print(f"{key:<16}{value:>10.4f}")


if __name__ == "__main__":
    main()
