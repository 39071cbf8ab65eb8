"""`forgellm bench latency`: one batch of requests at a time; TTFT, per-token latency, tokens/s.

Token times come from the engine's streamed step outputs: `time.perf_counter()` is read after each
step, and every request that gained tokens in that step gets that time for them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from forgellm.bench import engine_setup, report
from forgellm.bench.datasets import random_requests
from forgellm.bench.images import add_image_size_arg, image_prompt
from forgellm.bench.progress import progress_bar
from forgellm.bench.speculation import force_acceptance, speculation_summary, summary_rows
from forgellm.bench.stats import Summary, ratio, summarize
from forgellm.errors import ConfigError, ForgeLLMError

if TYPE_CHECKING:
    from forgellm.engine.llm_engine import LLMEngine

EXIT_ERROR = 2


@dataclass(frozen=True)
class BatchTiming:
    """One batch run: when it started and, per request, the time each output token arrived."""

    start: float
    token_times: list[list[float]]


@dataclass(frozen=True)
class LatencyResult:
    """Latency figures over the measured (non-warm-up) iterations."""

    batch_size: int
    input_len: int
    output_len: int
    num_iters: int
    ttft_s: Summary  # per request: batch start -> its first token
    itl_s: Summary  # every gap between consecutive tokens of a request
    e2e_s: Summary  # per iteration: batch start -> last token of the batch
    output_tok_s: float  # batch_size * output_len / mean end-to-end latency
    decode_tok_s: float  # batch_size / mean inter-token latency (prefill excluded)
    speculation: dict[str, Any] | None = None  # acceptance figures (speculation.speculation_summary)

    @property
    def itl_p99_over_p50(self) -> float:
        """How much the slow tail of per-token latency exceeds the typical step."""
        return ratio(self.itl_s.p99, self.itl_s.p50)


def run_batch(engine: LLMEngine, prompts: list[list[int]], params: Any, tag: str) -> BatchTiming:
    """Run `prompts` together to completion, recording each request's token arrival times."""
    ids = [f"{tag}-{i}" for i in range(len(prompts))]
    counts = dict.fromkeys(ids, 0)
    times: dict[str, list[float]] = {rid: [] for rid in ids}
    clock = time.perf_counter
    start = clock()
    for rid, prompt in zip(ids, prompts):
        engine.add_request(rid, prompt, params, stream=True)
    while engine.has_unfinished_requests():
        outputs = engine.step()
        now = clock()
        for out in outputs:
            total = len(out.outputs[0].token_ids)
            new = total - counts[out.request_id]
            if new > 0:  # several tokens in one step (speculation) arrive together
                times[out.request_id].extend([now] * new)
                counts[out.request_id] = total
    return BatchTiming(start, [times[rid] for rid in ids])


def summarize_batches(batches: list[BatchTiming], batch_size: int, input_len: int, output_len: int) -> LatencyResult:
    """Reduce measured batches to TTFT, inter-token and end-to-end latency distributions."""
    ttfts, gaps, e2es = [], [], []
    for batch in batches:
        e2es.append(max(t[-1] for t in batch.token_times) - batch.start)
        for tokens in batch.token_times:
            ttfts.append(tokens[0] - batch.start)
            gaps.extend(b - a for a, b in zip(tokens, tokens[1:]))
    itl = summarize(gaps)
    e2e = summarize(e2es)
    return LatencyResult(
        batch_size=batch_size,
        input_len=input_len,
        output_len=output_len,
        num_iters=len(batches),
        ttft_s=summarize(ttfts),
        itl_s=itl,
        e2e_s=e2e,
        output_tok_s=ratio(batch_size * output_len, e2e.mean),
        decode_tok_s=ratio(batch_size, itl.mean),
    )


def measure_latency(
    engine: LLMEngine,
    batch_size: int,
    input_len: int,
    output_len: int,
    num_iters: int,
    num_warmup: int = 1,
    temperature: float = 1.0,
    seed: int = 0,
    disable_tqdm: bool = False,
    forced_acceptance: float | None = None,
    structured_outputs: dict[str, Any] | None = None,
    image_size: tuple[int, int] | None = None,
) -> LatencyResult:
    """Warm up, then time `num_iters` batches of `batch_size` random prompts.

    With `forced_acceptance` a, verify steps accept each draft position with probability a
    (spec_decode/forced_acceptance.py): speculation measured on random weights. `structured_outputs`
    constrains every request (its grammar should outlast output_len, so every token is masked). With
    `image_size` (width, height) each request also shows the model a random image of that size.
    """
    if batch_size > engine.config.max_num_seqs:
        raise ConfigError(
            f"batch size {batch_size} exceeds max_num_seqs {engine.config.max_num_seqs}: the batch would not "
            "run together; raise --max-num-seqs"
        )
    params = engine_setup.bench_sampling_params(output_len, temperature)
    if structured_outputs is not None:
        params = dataclasses.replace(params, structured_outputs=structured_outputs)
    vocab = engine_setup.vocab_size(engine)
    if forced_acceptance is not None:
        force_acceptance(engine, forced_acceptance, seed)
    bar = progress_bar(num_warmup + num_iters, "latency", disable_tqdm)
    measured, measured_seconds, windows = [], 0.0, []
    try:
        for index in range(num_warmup + num_iters):
            # Fresh prompts every iteration: repeated ones would be served from the prefix cache.
            requests = random_requests(batch_size, input_len, output_len, vocab, seed=seed + index)
            prompts: list[Any] = [r.prompt_token_ids for r in requests]
            if image_size is not None:
                prompts = [
                    image_prompt(engine, p, image_size, (seed + index) * 1_000_003 + i) for i, p in enumerate(prompts)
                ]
            before = engine.stats()
            timing = run_batch(engine, prompts, params, f"lat{index}")
            if index >= num_warmup:
                measured.append(timing)
                measured_seconds += max(t[-1] for t in timing.token_times) - timing.start
                windows.append((before, engine.stats()))
            bar.update()
    finally:
        bar.close()
    result = summarize_batches(measured, batch_size, input_len, output_len)
    speculation = speculation_summary(windows, measured_seconds)
    return dataclasses.replace(result, speculation=speculation)


def result_table(result: LatencyResult) -> str:
    """TTFT, per-token and end-to-end latency percentiles, then the rates."""
    header = ["metric", "mean", "p50", "p90", "p99"]
    rows = []
    for name, summary, scale in (
        ("TTFT (ms)", result.ttft_s, 1e3),
        ("per-token latency (ms)", result.itl_s, 1e3),
        ("end-to-end latency (ms)", result.e2e_s, 1e3),
    ):
        s = summary.scaled(scale)
        rows.append([name, report.fmt(s.mean), report.fmt(s.p50), report.fmt(s.p90), report.fmt(s.p99)])
    rows.append(["per-token p99/p50", report.fmt(result.itl_p99_over_p50, 3), "", "", ""])
    rows.append(["output tokens/s", report.fmt(result.output_tok_s, 1), "", "", ""])
    rows.append(["decode tokens/s", report.fmt(result.decode_tok_s, 1), "", "", ""])
    if result.speculation is not None:
        rows.extend([name, value, "", "", ""] for name, value in summary_rows(result.speculation))
    return report.format_table(header, rows)


def result_json(result: LatencyResult, facts: dict[str, Any]) -> dict[str, Any]:
    """Everything measured, in milliseconds where a human reads it."""
    return {
        "benchmark": "latency",
        **facts,
        "batch_size": result.batch_size,
        "input_len": result.input_len,
        "output_len": result.output_len,
        "num_iters": result.num_iters,
        "ttft_ms": result.ttft_s.scaled(1e3).as_dict(),
        "itl_ms": result.itl_s.scaled(1e3).as_dict(),
        "e2e_ms": result.e2e_s.scaled(1e3).as_dict(),
        "itl_p99_over_p50": result.itl_p99_over_p50,
        "output_tok_s": result.output_tok_s,
        "decode_tok_s": result.decode_tok_s,
        "speculation": result.speculation,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The latency benchmark's flags (the model and engine flags are added by the CLI)."""
    group = parser.add_argument_group("latency benchmark")
    group.add_argument("--batch-size", type=int, default=1, help="requests run together (default: 1)")
    group.add_argument("--input-len", type=int, default=128, help="prompt tokens per request (default: 128)")
    group.add_argument("--output-len", type=int, default=128, help="generated tokens per request (default: 128)")
    group.add_argument("--num-iters", type=int, default=10, help="measured batches (default: 10)")
    group.add_argument("--num-iters-warmup", type=int, default=2, help="unmeasured batches first (default: 2)")
    group.add_argument("--output", metavar="FILE.json", default=None, help="also write the results as JSON")
    add_image_size_arg(group)
    group.add_argument(
        "--spec-acceptance",
        metavar="A",
        type=float,
        default=None,
        help="with --speculative-config: the proposer and the verification run for real, then each draft "
        "position is accepted with probability A; figures hold at acceptance A (for random weights, where "
        "real drafts agree with nothing; the generated text is meaningless)",
    )


def _check_args(args: argparse.Namespace) -> None:
    for name in ("batch_size", "input_len", "output_len", "num_iters"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.num_iters_warmup < 0:
        raise ConfigError(f"--num-iters-warmup must be >= 0, got {args.num_iters_warmup}")
    acceptance = args.spec_acceptance
    if acceptance is not None and not 0.0 <= acceptance <= 1.0:
        raise ConfigError(f"--spec-acceptance must be in [0, 1], got {acceptance}")


def run(args: argparse.Namespace) -> int:
    """Load the model, measure, print the table (and write --output); exit 2 on a forgellm error."""
    try:
        _check_args(args)
        config = engine_setup.engine_config_from_bench_args(args)
        engine = engine_setup.build_engine(config)
        facts = {"model": engine_setup.model_label(args, config), **engine_setup.describe_engine(engine)}
        result = measure_latency(
            engine,
            args.batch_size,
            args.input_len,
            args.output_len,
            args.num_iters,
            args.num_iters_warmup,
            args.temperature,
            config.seed,
            args.disable_tqdm,
            args.spec_acceptance,
            image_size=args.image_size,
        )
    except ForgeLLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    shape = f"batch {args.batch_size}, input {args.input_len}, output {args.output_len}"
    if args.image_size is not None:
        shape += ", one {}x{} image each".format(*args.image_size)
        facts["image_size"] = "{}x{}".format(*args.image_size)
    header = {**facts, "requests": shape, "iterations": f"{args.num_iters} (+{args.num_iters_warmup} warm-up)"}
    if config.speculative_config is not None:
        header["speculation"] = config.speculative_config.describe()
    if args.spec_acceptance is not None:
        header["speculation"] += f", forced acceptance {args.spec_acceptance}"
        facts["spec_forced_acceptance"] = args.spec_acceptance
    print(report.format_header("forgellm bench latency", header))
    print(result_table(result))
    if args.output:
        data = result_json(result, facts)
        data["engine_config"] = dataclasses.asdict(config)
        report.write_json(args.output, data)
    return 0
