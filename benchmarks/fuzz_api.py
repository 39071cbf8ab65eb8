"""Fuzz the OpenAI-compatible server from its /openapi.json with schemathesis: no 5xx, healthy after.

    python benchmarks/fuzz_api.py --seconds 600                    # starts its own forgellm serve
    python benchmarks/fuzz_api.py --base-url http://127.0.0.1:8000 --seconds 600

Requests are generated from each route's documented request body, valid ones (positive) and ones
that break the schema (negative), in rounds: a round runs every operation for --examples cases per
mode with its own Hypothesis seed, until --seconds have passed (the last round is cut short).
--workers N runs N such loops at once, with different seeds, for concurrent requests. Every response
must pass CHECKS: no 5xx, a documented status, content type, headers and body, a 4xx for every body
the schema calls invalid, and no error event in a stream. At the end /health must be 200, a normal
completion must succeed, and /metrics must show an idle engine (nothing running or waiting, KV cache
empty) with no failed sequence. Prints the number of requests, the statuses per operation, the most
frequent refusals and every failure with its smallest input (Hypothesis shrinks it); exits 1 on any
failure. tests/serve/test_fuzz.py runs the same fuzz, shorter, against an in-process server.

On a CPU that other processes keep busy, OMP_NUM_THREADS=1 makes the server it starts much faster.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)


def event_stream_ends_well(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 200 event stream holds no error event and ends with [DONE]: once streaming, the server can
    no longer answer a 5xx, so an engine failure shows up as an `error` event instead.

    Schemathesis reads at most 20 events of a stream and then hangs up (`stream_cut_short`): those
    streams are not expected to end, and their engine requests must be aborted (checked at the end).
    """
    content_type = ",".join(response.headers.get("content-type", []))
    if response.status_code != 200 or "text/event-stream" not in content_type:
        return None
    events = [
        line[len("data: ") :]
        for line in response.content.decode(errors="replace").splitlines()
        if line.startswith("data: ")
    ]
    # Chat and completions send {"error": ...}; /v1/responses sends a typed {"type": "error", ...}.
    errors = [event for event in events if event.startswith(('{"error":', '{"type":"error"'))]
    assert not errors, f"the event stream holds an error event: {errors[0]}"
    if not response.stream_cut_short:
        assert events and events[-1] == "[DONE]", f"the event stream does not end with [DONE]: {events[-1:]}"
    return None


# What every response must satisfy; negative_data_rejection: a body the schema calls invalid is
# refused with a 4xx (the request models are strict: "5" is no integer, 1 no boolean). Left out:
# positive_data_acceptance (a valid body may still get a 400 the schema cannot express: a prompt
# too long for the context, min_tokens > max_tokens, a token id outside the vocabulary) and the
# stateful and auth checks (no resources; no API key in this fuzz).
CHECKS = (
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    event_stream_ends_well,
)
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
REQUEST_TIMEOUT_S = 120.0  # one generation of at most max_model_len tokens; far more on a loaded CPU
# Options of the server this script starts: a context of 64 tokens keeps every request cheap.
SERVE_OPTIONS = "--dtype float32 --max-model-len 64"


@dataclass
class FuzzReport:
    """What a fuzz run sent and saw."""

    requests: int = 0
    statuses: Counter = field(default_factory=Counter)  # (operation label, status) -> count
    failures: list[str] = field(default_factory=list)  # one report per failing operation and mode
    unfinished: list[str] = field(default_factory=list)  # operations and modes cut short by the deadline
    rejections: Counter = field(default_factory=Counter)  # (operation label, status, error code, param) -> count

    def server_errors(self) -> int:
        return sum(n for (_, status), n in self.statuses.items() if status >= 500)

    def summary(self, top: int = 15) -> str:
        lines = [f"{self.requests} requests, {self.server_errors()} with a 5xx status, {len(self.failures)} failures"]
        for label in sorted({label for label, _ in self.statuses}):
            counts = ", ".join(f"{s}: {n}" for (lab, s), n in sorted(self.statuses.items()) if lab == label)
            lines.append(f"  {label:<28} {counts}")
        if self.rejections:
            lines.append("most frequent 4xx (operation, status, error code, param):")
            lines.extend(f"  {n:>6}  {' '.join(map(str, key))}" for key, n in self.rejections.most_common(top))
        return "\n".join(lines)


def load_schema(base_url: str) -> Any:
    """The server's own OpenAPI schema, with `base_url` as where requests go."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", timeout=30)
    schema.config.update(base_url=base_url)
    return schema


def operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


def fuzz(
    schema: Any,
    *,
    examples: int,
    seed: int,
    deadline: float = float("inf"),
    max_tokens: int | None = None,
    modes: Sequence[GenerationMode] = MODES,
    report: FuzzReport | None = None,
    raise_failures: bool = False,
    session: requests.Session | None = None,
) -> FuzzReport:
    """Run every operation of `schema` for up to `examples` cases per mode, derandomized from `seed`.

    `deadline` (a time.monotonic() value) is shared out: each operation and mode gets an equal part
    of the time left when it starts, so slow generations cannot starve the routes after them, and
    cases generated after its part are not sent. `max_tokens` caps what generation requests ask for (see
    cap_max_tokens). A failing check either raises (`raise_failures`, for pytest: Hypothesis has
    shrunk the case first) or is recorded in the report.
    """
    report = report if report is not None else FuzzReport()
    session = session or requests.Session()
    # Negative cases need something to break: an operation without inputs has none. Valid
    # generations, the slow cases, go last and share the time the quick ones left.
    runs = [(op, mode) for op in operations(schema) for mode in modes if mode.is_positive or _has_inputs(op)]
    runs.sort(key=lambda run: (run[0].path in GENERATION_PATHS, run[1].is_positive))
    for i, (operation, mode) in enumerate(runs):
        now = time.monotonic()
        if now >= deadline:
            report.unfinished.append(f"{operation.label} ({mode.value})")
            continue
        share = now + (deadline - now) / (len(runs) - i)
        test = _fuzz_operation(operation, mode, examples, seed, share, max_tokens, report, session)
        try:
            test()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # schemathesis' FailureGroup is an ExceptionGroup
            if raise_failures:
                raise
            report.failures.append(f"{operation.label} ({mode.value}, seed {seed}):\n{exc}")
    return report


def _has_inputs(operation: Any) -> bool:
    return bool(operation.body) or any(True for _ in operation.iter_parameters())


GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/responses")


def cap_max_tokens(case: Any, cap: int) -> None:
    """Make a generation request ask for at most `cap` tokens per sequence (a CPU run must stay cheap):
    max_tokens is set where absent, and integers above `cap` are lowered; other values (the ones a
    negative case breaks on purpose) stay as generated."""
    if case.operation.path not in GENERATION_PATHS or not isinstance(case.body, dict):
        return
    body = case.body
    # /v1/responses names its budget max_output_tokens (and refuses max_tokens as unknown).
    keys = ("max_output_tokens",) if case.operation.path == "/v1/responses" else ("max_tokens", "max_completion_tokens")
    if all(body.get(key) is None for key in keys):
        body[keys[0]] = cap
    for key in keys:
        value = body.get(key)
        if type(value) is int and value > cap:
            body[key] = cap


# One case in SURROGATE_ODDS gets a lone UTF-16 surrogate in one of its strings: valid JSON
# ("\ud800") that schemathesis never writes (it draws Unicode text), and that once reached the
# tokenizer as a 500.
SURROGATE_ODDS = 10
SURROGATES = ("\ud800", "\udfff")


def insert_lone_surrogate(body: Any, where: int) -> bool:
    """Put a lone surrogate into string value number `where` (modulo their count) of a JSON body."""
    slots: list[tuple[Any, Any]] = []  # (container, key or index) of each string value, depth first
    stack = [body]
    while stack:
        item = stack.pop()
        pairs = item.items() if isinstance(item, dict) else enumerate(item) if isinstance(item, list) else ()
        for key, value in pairs:
            if isinstance(value, str):
                slots.append((item, key))
            else:
                stack.append(value)
    if not slots:
        return False
    container, key = slots[where % len(slots)]
    text = container[key]
    container[key] = text[: len(text) // 2] + SURROGATES[where % len(SURROGATES)] + text[len(text) // 2 :]
    return True


def _fuzz_operation(
    operation: Any,
    mode: GenerationMode,
    examples: int,
    seed: int,
    deadline: float,
    max_tokens: int | None,
    report: FuzzReport,
    session: requests.Session,
) -> Callable[[], None]:
    settings = hypothesis.settings(
        max_examples=examples,
        derandomize=True,  # with a fixed seed too: the same cases on every run, no example database
        database=None,
        deadline=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        print_blob=False,
    )

    # Only a body has strings to spoil; without one, the single case is drawn once.
    with_body = bool(operation.body)

    @settings
    @hypothesis.seed(seed)
    @hypothesis.given(
        case=operation.as_strategy(generation_mode=mode),
        odds=st.integers(0, SURROGATE_ODDS - 1) if with_body else st.just(0),
        where=st.integers(0, 255) if with_body else st.just(0),
    )
    def test(case: Any, odds: int, where: int) -> None:
        if time.monotonic() >= deadline:
            return
        if max_tokens is not None:
            cap_max_tokens(case, max_tokens)
        if odds == SURROGATE_ODDS - 1:
            insert_lone_surrogate(case.body, where)
        response = case.call(session=session, timeout=REQUEST_TIMEOUT_S)
        report.requests += 1
        report.statuses[(operation.label, response.status_code)] += 1
        if 400 <= response.status_code < 500:
            report.rejections[_rejection(operation.label, response)] += 1
        case.validate_response(response, checks=list(CHECKS))

    return test


def _rejection(label: str, response: requests.Response) -> tuple[str, int, str, str]:
    """Why a 4xx answer refused a case: its error code and param (the top ones show what the fuzz misses)."""
    try:
        error = response.json()["error"]
        return label, response.status_code, str(error["code"]), str(error["param"])
    except (ValueError, KeyError, TypeError):
        return label, response.status_code, "?", "?"


def metric(text: str, name: str) -> float:
    """The value of an unlabelled sample in Prometheus text (NaN when absent)."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else float("nan")


def check_healthy(base_url: str, model: str, wait_s: float = 30.0) -> list[str]:
    """Problems left after the fuzz: /health, a normal completion, an idle engine with no failed sequence."""
    problems = []
    health = requests.get(f"{base_url}/health", timeout=30)
    if health.status_code != 200:
        problems.append(f"/health answered {health.status_code}: {health.text}")
    body = {"model": model, "prompt": "def main():", "max_tokens": 4, "temperature": 0}
    completion = requests.post(f"{base_url}/v1/completions", json=body, timeout=REQUEST_TIMEOUT_S)
    if completion.status_code != 200 or completion.json()["usage"]["completion_tokens"] < 1:
        problems.append(f"a normal completion answered {completion.status_code}: {completion.text}")
    idle = ("forgellm_num_requests_running", "forgellm_num_requests_waiting", "forgellm_kv_cache_usage_ratio")
    deadline = time.monotonic() + wait_s  # aborts of abandoned streams may take a step to land
    while True:
        text = requests.get(f"{base_url}/metrics", timeout=30).text
        busy = {name: metric(text, name) for name in idle if metric(text, name) != 0}
        if not busy or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if busy:
        problems.append(f"the engine is not idle after the fuzz: {busy}")
    failed = metric(text, "forgellm_num_failed_sequences_total")
    if failed != 0:
        problems.append(f"{failed} sequences failed in an engine step (see the server's log)")
    return problems


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_serve(options: Sequence[str]) -> tuple[subprocess.Popen, str, Path]:
    """`forgellm serve` with `options` on a free port: (process, base URL, log file)."""
    port = _free_port()
    command = [sys.executable, "-m", "forgellm", "serve", "--port", str(port), "--log-level", "warning", *options]
    with tempfile.NamedTemporaryFile("w", prefix="forgellm-fuzz-", suffix=".log", delete=False) as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if requests.get(f"{base_url}/health", timeout=1).status_code == 200:
                return process, base_url, Path(log.name)
        except requests.ConnectionError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"forgellm serve did not start:\n{Path(log.name).read_text()}")
        time.sleep(0.2)


def fuzz_rounds(
    base_url: str, seconds: float, examples: int, seed: int, max_tokens: int | None, worker: int = 0, workers: int = 1
) -> tuple[FuzzReport, int]:
    """Fuzz `base_url` in rounds until `seconds` have passed: (the report, the number of rounds).

    Round r of worker w uses seed `seed + r * workers + w`, so no two rounds send the same cases.
    """
    schema = load_schema(base_url)
    report = FuzzReport()
    start = time.monotonic()
    deadline = start + seconds
    rounds = 0
    while time.monotonic() < deadline:
        round_seed = seed + rounds * workers + worker
        fuzz(schema, examples=examples, seed=round_seed, deadline=deadline, max_tokens=max_tokens, report=report)
        rounds += 1
        print(
            f"{f'worker {worker}: ' if workers > 1 else ''}round {rounds} (seed {round_seed}) done at "
            f"{time.monotonic() - start:.0f} s: {report.requests} requests, {len(report.failures)} failures",
            flush=True,
        )
    return report, rounds


def merge_reports(reports: Sequence[FuzzReport]) -> FuzzReport:
    merged = FuzzReport()
    for report in reports:
        merged.requests += report.requests
        merged.statuses.update(report.statuses)
        merged.rejections.update(report.rejections)
        merged.failures.extend(report.failures)
        merged.unfinished.extend(report.unfinished)
    return merged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="fuzz this server instead of starting forgellm serve")
    parser.add_argument("--serve-options", default=SERVE_OPTIONS, help="options of the forgellm serve it starts")
    parser.add_argument("--seconds", type=float, default=300, help="how long to keep sending requests")
    parser.add_argument("--examples", type=int, default=50, help="cases per operation and mode in each round")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first round")
    parser.add_argument("--max-tokens", type=int, help="cap on the tokens a generation request asks for")
    parser.add_argument("--workers", type=int, default=1, help="processes fuzzing at once (concurrent requests)")
    args = parser.parse_args()
    process = log = None
    if args.base_url is None:
        process, base_url, log = start_serve(shlex.split(args.serve_options))
        print(f"started forgellm serve {args.serve_options} at {base_url} (log: {log})", flush=True)
    else:
        base_url = args.base_url.rstrip("/")
    try:
        model = requests.get(f"{base_url}/v1/models", timeout=30).json()["data"][0]["id"]
        start = time.monotonic()
        jobs = [
            (base_url, args.seconds, args.examples, args.seed, args.max_tokens, w, args.workers)
            for w in range(args.workers)
        ]
        if args.workers == 1:
            results = [fuzz_rounds(*jobs[0])]
        else:
            with concurrent.futures.ProcessPoolExecutor(args.workers) as pool:
                results = list(pool.map(fuzz_rounds, *zip(*jobs)))
        elapsed = time.monotonic() - start
        report = merge_reports([r for r, _ in results])
        rounds = sum(n for _, n in results)
        problems = check_healthy(base_url, model)
    finally:
        if process is not None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    print(f"\n{rounds} rounds in {elapsed:.0f} s ({report.requests / elapsed:.1f} requests/s)")
    print(report.summary())
    for failure in report.failures:
        print(f"\nFAILURE {failure}")
    for problem in problems:
        print(f"\nUNHEALTHY {problem}")
    if log is not None and (report.failures or problems):
        print(f"\nserver log: {log}")
    return 1 if report.failures or problems else 0


if __name__ == "__main__":
    sys.exit(main())
