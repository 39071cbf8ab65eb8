"""Where an offline throughput run spends its time: steps with prompt tokens vs decode-only steps.

Runs `forgellm bench throughput`'s workload (random prompts, EOS ignored) and times every engine
step. With asynchronous scheduling a call to step() waits for the step launched by the call before
it, so each wait is charged to that step's batch.

    python benchmarks/throughput_timeline.py --num-prompts 3000 --input-len 128 --output-len 128 --max-num-seqs 512
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

from forgellm.bench.datasets import random_requests
from forgellm.bench.engine_setup import bench_sampling_params, build_engine
from forgellm.config import EngineConfig
from forgellm.models.presets import preset_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-config", default="llama-3.1-8b")
    parser.add_argument("--num-prompts", type=int, default=3000)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--max-num-seqs", type=int, default=512)
    args = parser.parse_args()
    config = EngineConfig(
        model=str(preset_dir(args.model_config)),
        load_format="dummy",
        dtype="bfloat16",
        max_model_len=args.input_len + args.output_len + 8,
        max_num_seqs=args.max_num_seqs,
    )
    engine = build_engine(config)
    core = engine.core
    launched: list[tuple[int, int]] = []  # (prompt tokens, decode tokens) of each launched step
    schedule = core.scheduler.schedule

    def recording_schedule():  # noqa: ANN202 - the scheduler's signature
        out = schedule()
        decodes = sum(1 for s in out.scheduled if s.num_new_tokens == 1)
        if out.scheduled:
            launched.append((out.num_batched_tokens - decodes, decodes))
        return out

    core.scheduler.schedule = recording_schedule
    params = bench_sampling_params(args.output_len)
    requests = random_requests(args.num_prompts, args.input_len, args.output_len, engine.arch.vocab_size, seed=0)
    for index, request in enumerate(requests):
        engine.add_request(str(index), request.prompt_token_ids, params)
    times: list[float] = []
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        t0 = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    lag = 1 if core.async_scheduling else 0
    groups: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0])
    for index, (prompt_tokens, decodes) in enumerate(launched):
        if index + lag >= len(times):
            break
        kind = "with prompt tokens" if prompt_tokens else f"decode-only, {64 * (decodes // 64)}+ requests"
        group = groups[kind]
        group[0] += 1
        group[1] += times[index + lag]
        group[2] += decodes
    out_tokens = args.num_prompts * args.output_len
    print(f"{out_tokens / total:,.0f} output tok/s, {total:.1f} s, {len(launched)} steps")
    print(f"{'steps':28}{'count':>7}{'seconds':>9}{'ms/step':>9}{'decode tokens':>15}")
    for kind, (count, seconds, decodes) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
        print(f"{kind:28}{count:7d}{seconds:9.2f}{1e3 * seconds / count:9.2f}{decodes:15d}")


if __name__ == "__main__":
    main()
