"""`forgellm bench serve`: load any OpenAI-compatible server with streaming requests and measure it.

Requests come from random token ids or a ShareGPT file; they are sent at a Poisson rate, or all at
once, optionally capped at a fixed concurrency. Reported: requests/s, output and total tokens/s, and
TTFT, TPOT, inter-token and end-to-end latency (mean, p50, p90, p99), as a table, JSON and a plot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from forgellm.bench import report
from forgellm.bench.datasets import BenchRequest, load_sharegpt, parse_range, random_requests
from forgellm.bench.serve_client import Server
from forgellm.bench.serve_report import RequestResult, format_summary, plot, summarize_run

EXIT_ERROR = 2
DEFAULT_LEN = 128
ENDPOINTS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


def _length(text: str) -> int | tuple[int, int]:
    return parse_range(text) if ":" in text else int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the load, dataset and report options of `bench serve` to `parser`."""
    parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="the server (default: %(default)s)")
    parser.add_argument(
        "--endpoint",
        choices=sorted(ENDPOINTS),
        default="completions",
        help="completions (prompts as token ids) or chat (prompts as text); default: %(default)s",
    )
    parser.add_argument("--model", default=None, help="the 'model' field (default: the server's first model)")
    parser.add_argument("--api-key", default=os.environ.get("FORGELLM_API_KEY") or os.environ.get("OPENAI_API_KEY"))
    parser.add_argument("--dataset", choices=["random", "sharegpt"], default="random")
    parser.add_argument("--dataset-path", default=None, help="ShareGPT-format JSON file (with --dataset sharegpt)")
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="model directory whose tokenizer builds the prompts (default: the embedded demo's)",
    )
    parser.add_argument("--num-prompts", type=int, default=100, metavar="N")
    parser.add_argument(
        "--input-len", type=_length, default=DEFAULT_LEN, metavar="N|LOW:HIGH", help="random prompt tokens"
    )
    parser.add_argument(
        "--output-len",
        type=_length,
        default=None,
        metavar="N|LOW:HIGH",
        help=f"tokens to generate (default: {DEFAULT_LEN}; ShareGPT: each reply's length)",
    )
    parser.add_argument(
        "--request-rate",
        type=float,
        default=math.inf,
        metavar="R",
        help="Poisson arrivals per second; inf sends all at once (default)",
    )
    parser.add_argument("--max-concurrency", type=int, default=None, metavar="C", help="most requests in flight")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument(
        "--ignore-eos",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send ignore_eos (a vLLM/forgellm extension) so outputs have the asked length",
    )
    parser.add_argument("--num-warmups", type=int, default=0, metavar="N", help="unmeasured requests first")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="S", help="per-request limit in seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, metavar="FILE.json", help="write the results as JSON")
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="latency plot (needs matplotlib)")


def run(args: argparse.Namespace) -> int:
    """Build the requests, run the load, print the table; exit 1 if every request failed."""
    try:
        requests, tokenizer = _build_requests(args)
        server = Server.from_url(args.base_url, args.api_key)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        results, duration, model = asyncio.run(_run_load(server, requests, tokenizer, args))
    except (OSError, ValueError) as exc:
        print(f"error: cannot reach {args.base_url}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    summary = summarize_run(results, duration)
    rate = "inf" if math.isinf(args.request_rate) else args.request_rate
    facts = {
        "server": args.base_url,
        "model": model,
        "endpoint": args.endpoint,
        "requests": len(requests),
        "request rate": rate,
        "max concurrency": args.max_concurrency or "unlimited",
    }
    print(format_summary(summary, facts))
    if args.output:
        config = {
            k: (str(v) if isinstance(v, float) and math.isinf(v) else v)
            for k, v in vars(args).items()
            if k not in ("handler", "api_key")
        }
        report.write_json(
            args.output, {"config": config, "model": model, "commit": report.git_commit(), **summary.as_dict()}
        )
    if args.plot and not plot(results, args.plot):
        print("note: --plot needs matplotlib; no plot written", file=sys.stderr)
    return 1 if summary.completed == 0 else 0


def _build_requests(args: argparse.Namespace) -> tuple[list[BenchRequest], Any]:
    from forgellm.engine.llm_engine import DEMO_MODEL_DIR
    from forgellm.hf.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dir(Path(args.tokenizer) if args.tokenizer else DEMO_MODEL_DIR)
    count = args.num_prompts + args.num_warmups
    if args.dataset == "sharegpt":
        if not args.dataset_path:
            raise ValueError("--dataset sharegpt needs --dataset-path FILE.json")
        if isinstance(args.output_len, tuple):
            raise ValueError("with --dataset sharegpt, --output-len is one number (or left out)")
        encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
        return load_sharegpt(args.dataset_path, count, encode, args.seed, output_len=args.output_len), tokenizer
    output_len = args.output_len if args.output_len is not None else DEFAULT_LEN
    return random_requests(count, args.input_len, output_len, tokenizer.vocab_size, args.seed), tokenizer


def _payload(req: BenchRequest, args: argparse.Namespace, model: str, tokenizer: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": req.output_len,
        "temperature": args.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if args.ignore_eos:
        body["ignore_eos"] = True
    if args.endpoint == "chat":
        text = tokenizer.decode(req.prompt_token_ids)
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = req.prompt_token_ids
    return body


async def _run_load(
    server: Server, requests: list[BenchRequest], tokenizer: Any, args: argparse.Namespace
) -> tuple[list[RequestResult], float, str]:
    model = args.model or (await server.get_json("/v1/models"))["data"][0]["id"]
    path = ENDPOINTS[args.endpoint]
    warmups, measured = requests[: args.num_warmups], requests[args.num_warmups :]
    for req in warmups:
        result = await _one(
            server, path, _payload(req, args, model, tokenizer), len(req.prompt_token_ids), args.timeout
        )
        if not result.ok:
            raise ValueError(f"warm-up request failed: {result.error}")
    limit = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None
    rng = random.Random(args.seed)

    async def limited(req: BenchRequest) -> RequestResult:
        payload = _payload(req, args, model, tokenizer)
        if limit is None:
            return await _one(server, path, payload, len(req.prompt_token_ids), args.timeout)
        async with limit:
            return await _one(server, path, payload, len(req.prompt_token_ids), args.timeout)

    start = time.perf_counter()
    tasks = []
    for req in measured:
        tasks.append(asyncio.ensure_future(limited(req)))
        if math.isfinite(args.request_rate) and args.request_rate > 0:
            await asyncio.sleep(rng.expovariate(args.request_rate))
    results = list(await asyncio.gather(*tasks))
    return results, time.perf_counter() - start, model


async def _one(server: Server, path: str, payload: dict[str, Any], prompt_len: int, timeout: float) -> RequestResult:
    result = RequestResult(prompt_len, time.perf_counter())
    try:
        await asyncio.wait_for(_stream_into(result, server, path, payload), timeout)
        result.ok = True
    except asyncio.TimeoutError:
        result.error = f"timed out after {timeout:g} s"
    except Exception as exc:  # any failure is one failed request, reported, never a crash of the run
        result.error = f"{type(exc).__name__}: {exc}"
    return result


async def _stream_into(result: RequestResult, server: Server, path: str, payload: dict[str, Any]) -> None:
    last, chunks, usage_tokens = result.start, 0, None
    async for data in server.post_events(path, payload):
        now = time.perf_counter()
        if data == b"[DONE]":
            break
        event = json.loads(data)
        if "error" in event:
            raise RuntimeError(f"error event: {event['error'].get('message')}")
        if event.get("usage"):
            usage_tokens = event["usage"].get("completion_tokens")
        if any(_carries_tokens(choice) for choice in event.get("choices") or []):
            if result.ttft is None:
                result.ttft = now - result.start
            else:
                result.itl.append(now - last)
            last = now
            chunks += 1
    result.latency = time.perf_counter() - result.start
    result.output_len = usage_tokens if usage_tokens is not None else chunks


def _carries_tokens(choice: dict[str, Any]) -> bool:
    """Whether a streamed choice brings generated tokens.

    Empty text counts: a token can decode to nothing yet (part of a character, or an id beyond a
    borrowed tokenizer's vocabulary with random weights), and skipping it would skew TTFT and ITL.
    Chat's opening role chunk and a bare finish carry no token.
    """
    if "text" in choice:
        text = choice["text"]
    else:
        delta = choice.get("delta") or {}
        if "role" in delta:
            return False
        text = delta.get("content")
    return isinstance(text, str) and (text != "" or choice.get("finish_reason") is None)
