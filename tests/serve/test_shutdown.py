"""`forgellm serve` as a real process: SIGTERM stops accepting, drains within --shutdown-timeout, exits 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import openai

SHUTDOWN_TIMEOUT_S = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_sigterm_drains_running_requests_then_exits_cleanly():
    port = _free_port()
    options = f"--port {port} --dtype float32 --shutdown-timeout {SHUTDOWN_TIMEOUT_S} --log-level warning"
    command = [sys.executable, "-m", "forgellm", "serve", *options.split()]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not _healthy(port):
            assert process.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=30)
        results: dict[str, object] = {}

        def consume(name: str, max_tokens: int) -> None:
            stream = client.completions.create(
                model="forgellm-demo", prompt=name, max_tokens=max_tokens, stream=True, extra_body={"ignore_eos": True}
            )
            try:
                finish = [c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason]
                results[name] = finish
            except Exception as exc:  # the long request is cut off at the timeout
                results[name] = exc

        # "short" finishes well within the timeout; "long" (2000 tokens, several seconds at least) cannot.
        threads = [threading.Thread(target=consume, args=a) for a in (("short", 40), ("long", 2000))]
        for thread in threads:
            thread.start()
        time.sleep(0.3)  # both are running
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert _wait(lambda: not _accepts(port), 5), "still accepting connections after SIGTERM"
        code = process.wait(timeout=SHUTDOWN_TIMEOUT_S + 15)
        took = time.monotonic() - started
        for thread in threads:
            thread.join(timeout=10)
        output = process.stdout.read() if process.stdout else ""
        assert code == 0, output
        assert SHUTDOWN_TIMEOUT_S - 0.5 <= took <= SHUTDOWN_TIMEOUT_S + 10, took
        assert results["short"] == ["length"]  # drained: it ran to its end
        assert isinstance(results["long"], Exception) or results["long"] != ["length"]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def _wait(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False
