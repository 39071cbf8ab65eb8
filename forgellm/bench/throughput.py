"""`forgellm bench throughput`: queue every request at once, run to completion, report tokens/s."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from forgellm.bench import engine_setup, report
from forgellm.bench.datasets import BenchRequest, load_sharegpt, parse_range, random_requests
from forgellm.bench.images import add_image_size_arg, image_prompt
from forgellm.bench.progress import progress_bar
from forgellm.bench.speculation import speculation_summary, summary_rows
from forgellm.bench.stats import Summary, ratio, summarize
from forgellm.errors import ConfigError, ForgeLLMError

if TYPE_CHECKING:
    from forgellm.engine.llm_engine import LLMEngine

EXIT_ERROR = 2
DEFAULT_LEN = 128
WARMUP_OUTPUT_LEN = 8


@dataclass(frozen=True)
class ThroughputResult:
    """Totals of one offline run; `complete` is False when a time limit aborted it (figures: finished only)."""

    num_requests: int
    num_finished: int
    elapsed_s: float
    prompt_tokens: int
    output_tokens: int
    ttft_s: Summary  # arrival -> first token, per finished request (queueing included)
    complete: bool = True
    speculation: dict[str, Any] | None = None  # acceptance figures (speculation.speculation_summary)

    @property
    def requests_per_s(self) -> float:
        """Finished requests per second."""
        return ratio(self.num_finished, self.elapsed_s)

    @property
    def output_tok_s(self) -> float:
        """Generated tokens per second."""
        return ratio(self.output_tokens, self.elapsed_s)

    @property
    def total_tok_s(self) -> float:
        """Prompt plus generated tokens per second."""
        return ratio(self.prompt_tokens + self.output_tokens, self.elapsed_s)


def warm_up(
    engine: LLMEngine,
    requests: list[BenchRequest],
    count: int,
    temperature: float,
    seed: int,
    image_size: tuple[int, int] | None = None,
) -> None:
    """Run a few short requests shaped like the first ones (random ids, so nothing lands in the prefix cache)."""
    shapes = requests[:count]
    if not shapes:
        return
    vocab = engine_setup.vocab_size(engine)
    params = engine_setup.bench_sampling_params(WARMUP_OUTPUT_LEN, temperature)
    for i, shape in enumerate(shapes):
        prompt = random_requests(1, len(shape.prompt_token_ids), 1, vocab, seed=seed + 7919 + i)[0]
        warm: Any = prompt.prompt_token_ids
        if image_size is not None:  # the vision tower warms up too
            warm = image_prompt(engine, warm, image_size, seed + 7919 + i)
        engine.add_request(f"warmup-{i}", warm, params)
    while engine.has_unfinished_requests():
        engine.step()


def measure_throughput(
    engine: LLMEngine,
    requests: list[BenchRequest],
    temperature: float = 1.0,
    disable_tqdm: bool = False,
    time_limit_s: float | None = None,
    image_size: tuple[int, int] | None = None,
) -> ThroughputResult:
    """Queue all requests, step until done (or `time_limit_s`, then abort the rest); time from queueing."""
    params_by_len: dict[int, Any] = {}
    processed = []
    # Validation happens before the clock starts: the prompts are token ids, there is nothing to tokenize.
    for r in requests:
        if r.output_len not in params_by_len:
            params_by_len[r.output_len] = engine_setup.bench_sampling_params(r.output_len, temperature)
        prompt: Any = r.prompt_token_ids
        if image_size is not None:  # each its own random image, preprocessed here, before the clock
            prompt = image_prompt(engine, prompt, image_size, 7_000_003 + len(processed))
        processed.append(engine.process(prompt, params_by_len[r.output_len]))
    ids = [f"tput-{i}" for i in range(len(processed))]
    finished, prompt_tokens, output_tokens, ttfts = 0, 0, 0, []
    complete = True
    bar = progress_bar(len(ids), "throughput", disable_tqdm)
    clock = time.perf_counter
    before = engine.stats()
    start = clock()
    deadline = start + time_limit_s if time_limit_s is not None else None
    try:
        for rid, item in zip(ids, processed):
            engine.add_request(rid, item)
        while engine.has_unfinished_requests():
            for out in engine.step():
                if not out.finished:
                    continue
                finished += 1
                prompt_tokens += len(out.prompt_token_ids)
                output_tokens += len(out.outputs[0].token_ids)
                m = out.metrics
                if m is not None and m.first_token_time is not None:
                    ttfts.append(m.first_token_time - m.arrival_time)
                bar.update()
            if deadline is not None and clock() > deadline and engine.has_unfinished_requests():
                complete = False
                break
        elapsed = clock() - start
    finally:
        bar.close()
        if engine.has_unfinished_requests():  # a time limit or an error: leave the engine empty
            for rid in ids:
                engine.abort_request(rid)
    speculation = speculation_summary([(before, engine.stats())], elapsed)
    return ThroughputResult(
        len(ids), finished, elapsed, prompt_tokens, output_tokens, summarize(ttfts), complete, speculation
    )


def result_table(result: ThroughputResult) -> str:
    """Rates first, then the totals they come from."""
    rows = [
        ["requests/s", report.fmt(result.requests_per_s)],
        ["output tokens/s", report.fmt(result.output_tok_s, 1)],
        ["total tokens/s", report.fmt(result.total_tok_s, 1)],
        ["elapsed (s)", report.fmt(result.elapsed_s)],
        ["requests finished", f"{result.num_finished:,} / {result.num_requests:,}"],
        ["prompt tokens", report.fmt(result.prompt_tokens)],
        ["output tokens", report.fmt(result.output_tokens)],
        ["mean TTFT (ms)", report.fmt(result.ttft_s.mean * 1e3)],
    ]
    if result.speculation is not None:
        rows.extend(summary_rows(result.speculation))
    return report.format_table(["metric", "value"], rows)


def result_json(result: ThroughputResult, facts: dict[str, Any]) -> dict[str, Any]:
    """Everything measured."""
    return {
        "benchmark": "throughput",
        **facts,
        "num_requests": result.num_requests,
        "num_finished": result.num_finished,
        "complete": result.complete,
        "elapsed_s": result.elapsed_s,
        "prompt_tokens": result.prompt_tokens,
        "output_tokens": result.output_tokens,
        "requests_per_s": result.requests_per_s,
        "output_tok_s": result.output_tok_s,
        "total_tok_s": result.total_tok_s,
        "ttft_ms": result.ttft_s.scaled(1e3).as_dict(),
        "speculation": result.speculation,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The throughput benchmark's flags (the model and engine flags are added by the CLI)."""
    group = parser.add_argument_group("throughput benchmark")
    group.add_argument("--num-prompts", type=int, default=1000, help="requests to run (default: 1000)")
    group.add_argument("--input-len", type=int, default=None, help=f"prompt tokens (default: {DEFAULT_LEN})")
    group.add_argument("--output-len", type=int, default=None, help=f"generated tokens (default: {DEFAULT_LEN})")
    group.add_argument("--input-len-range", metavar="LOW:HIGH", default=None, help="uniform random prompt lengths")
    group.add_argument("--output-len-range", metavar="LOW:HIGH", default=None, help="uniform random output lengths")
    group.add_argument(
        "--dataset",
        metavar="FILE.json",
        default=None,
        help="ShareGPT-format conversations instead of random prompts (--output-len then fixes output lengths)",
    )
    group.add_argument("--num-warmup-requests", type=int, default=4, help="short untimed requests first (default: 4)")
    group.add_argument("--output", metavar="FILE.json", default=None, help="also write the results as JSON")
    add_image_size_arg(group)


def build_requests(args: argparse.Namespace, engine: LLMEngine, seed: int) -> list[BenchRequest]:
    """The requests the flags describe: ShareGPT conversations or random token ids."""
    if args.num_prompts < 1:
        raise ConfigError(f"--num-prompts must be >= 1, got {args.num_prompts}")
    if args.dataset is not None:
        if args.input_len is not None or args.input_len_range is not None:
            raise ConfigError("--dataset sets the prompts; drop --input-len / --input-len-range")
        if args.output_len_range is not None:
            raise ConfigError(
                "--dataset takes output lengths from the replies or --output-len; drop --output-len-range"
            )
        try:
            return load_sharegpt(args.dataset, args.num_prompts, engine.tokenizer.encode, seed, args.output_len)
        except ValueError as exc:  # an unreadable or unusable file is the user's to fix
            raise ConfigError(str(exc)) from None
    return random_requests(
        args.num_prompts,
        _length(args.input_len, args.input_len_range, "input"),
        _length(args.output_len, args.output_len_range, "output"),
        engine_setup.vocab_size(engine),
        seed,
    )


def _length(fixed: int | None, span: str | None, name: str) -> int | tuple[int, int]:
    if fixed is not None and span is not None:
        raise ConfigError(f"give --{name}-len or --{name}-len-range, not both")
    if span is not None:
        try:
            return parse_range(span)
        except ValueError as exc:
            raise ConfigError(f"--{name}-len-range: {exc}") from None
    if fixed is not None and fixed < 1:
        raise ConfigError(f"--{name}-len must be >= 1, got {fixed}")
    return fixed if fixed is not None else DEFAULT_LEN


def describe_requests(args: argparse.Namespace, requests: list[BenchRequest]) -> str:
    """'1000 x 128 in / 128 out' or a summary of the dataset's lengths."""
    source = args.dataset or "random token ids"
    mean_in = sum(len(r.prompt_token_ids) for r in requests) / len(requests)
    mean_out = sum(r.output_len for r in requests) / len(requests)
    return f"{len(requests):,} from {source}; mean {mean_in:.0f} in / {mean_out:.0f} out"


def run(args: argparse.Namespace) -> int:
    """Load the model, run every request, print the table (and write --output); exit 2 on an error."""
    try:
        config = engine_setup.engine_config_from_bench_args(args)
        engine = engine_setup.build_engine(config)
        requests = build_requests(args, engine, config.seed)
        facts = {"model": engine_setup.model_label(args, config), **engine_setup.describe_engine(engine)}
        warm_up(engine, requests, args.num_warmup_requests, args.temperature, config.seed, args.image_size)
        result = measure_throughput(engine, requests, args.temperature, args.disable_tqdm, image_size=args.image_size)
    except ForgeLLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(report.format_header("forgellm bench throughput", {**facts, "requests": describe_requests(args, requests)}))
    print(result_table(result))
    if args.output:
        data = result_json(result, facts)
        data["engine_config"] = dataclasses.asdict(config)
        report.write_json(args.output, data)
    return 0
