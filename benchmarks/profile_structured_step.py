"""Where a constrained decode step's host time goes, with asynchronous scheduling on and off.

    python benchmarks/profile_structured_step.py --batch-size 64 --steps 60

Builds the Llama-3.1-8B shape (random weights), runs `--batch-size` JSON-schema constrained requests (and
as many unconstrained ones, for comparison) and prints the mean host milliseconds per engine step spent in
each phase: scheduling, the forward launch, waiting for the step before, updating the requests, starting the
grammars' accepts and mask fills on their pool, the waits for each, the sampler, and the whole step.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO)

import torch  # noqa: E402

from forgellm import LLM, SamplingParams  # noqa: E402
from forgellm.models.presets import preset_dir  # noqa: E402
from forgellm.structured.grammar_pool import GrammarPool  # noqa: E402

SCHEMA = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 999}, "minItems": 10000}


def timed(totals: dict[str, float], owner: object, name: str, label: str) -> None:
    """Add the wall time of every call of owner.name to totals[label]."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[label] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def timed_waits(totals: dict[str, float], owner: object, name: str, labels: tuple[str, ...]) -> None:
    """Add the wall time spent in each of the waits that owner.name returns to totals[labels[i]]."""
    original = getattr(owner, name)

    def timing(wait, label):  # noqa: ANN001, ANN202
        def timed_wait() -> None:
            start = time.perf_counter()
            try:
                wait()
            finally:
                totals[label] += time.perf_counter() - start

        return timed_wait

    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return tuple(timing(wait, label) for wait, label in zip(original(*args, **kwargs), labels))

    setattr(owner, name, wrapper)


def profile(llm: LLM, batch: int, steps: int, constrained: bool) -> dict[str, float]:
    """Mean host ms per step of each phase over `steps` decode steps of `batch` requests."""
    engine, core = llm.engine, llm.engine.core
    extra = {"structured_outputs": {"json": SCHEMA}} if constrained else {}
    params = SamplingParams(temperature=0.0, max_tokens=steps + 40, ignore_eos=True, detokenize=False, **extra)
    generator = torch.Generator().manual_seed(0)
    for i in range(batch):
        prompt = torch.randint(3, 4000, (64,), generator=generator).tolist()
        engine.add_request(f"{constrained}-{i}", prompt, params)
    for _ in range(8):  # prefill and warm-up
        engine.step()
    totals: dict[str, float] = defaultdict(float)
    patches = [
        (core.scheduler, "schedule", "schedule"),
        (core.scheduler, "update_from_output", "update requests"),
        (core.runner, "launch", "launch"),
        (core.runner, "collect", "collect (wait)"),
        (core.runner, "sample_deferred", "sample_deferred"),
        (core.runner, "sampler", "sampler"),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, label in patches:
        timed(totals, owner, name, label)
    timed(totals, core.runner, "prefetch_masks", "accept + fill (start)")
    map_then_async = GrammarPool.map_then_async
    timed_waits(totals, GrammarPool, "map_then_async", ("  waiting for accepts", "  waiting for masks"))
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
    synchronize()
    totals["step (wall)"] = time.perf_counter() - start
    GrammarPool.map_then_async = map_then_async
    for owner, name, original in saved:
        setattr(owner, name, original)
    for request_id in list(engine.output_processor.requests):
        engine.abort_request(request_id)
    while engine.has_unfinished_requests():
        engine.step()
    return {label: total * 1e3 / steps for label, total in totals.items()}


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--async-modes", default="on,off")
    parser.add_argument("--pool-modes", default="serial,threads-8", help="GrammarPool modes")
    parser.add_argument("--model", default=None, help="a checkpoint (default: preset llama-3.1-8b, random weights)")
    args = parser.parse_args()
    for mode in args.async_modes.split(","):
        model = args.model or str(preset_dir("llama-3.1-8b"))
        load_format = "auto" if args.model else "dummy"
        llm = LLM(model, load_format=load_format, max_num_seqs=args.batch_size, async_scheduling=mode)
        for fill in [None, *args.pool_modes.split(",")]:
            if fill is not None:  # a request's grammar takes the backend's filler when it is admitted
                fill_mode, _, threads = fill.partition("-")
                llm.engine.input_processor.grammars.pool = GrammarPool(fill_mode, int(threads or 1))
            phases = profile(llm, args.batch_size, args.steps, constrained=fill is not None)
            kind = f"json schema, grammar pool {fill}" if fill else "unconstrained"
            title = f"async {mode}, batch {args.batch_size}, {kind}"
            print(f"\n== {title}: mean host ms per step")
            for label, ms in phases.items():
                print(f"{label:<28}{ms:>9.3f}")
        del llm
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
