"""A real `forgellm serve` process on a free port, as an operator runs it (or with faults planted)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai

from tests.serve.http_helpers import free_port, health_status, http_request

FAULTY_SERVE = Path(__file__).with_name("faulty_serve.py")
STARTUP_TIMEOUT_S = 120.0  # a loaded 2-core machine can take a while to import torch twice


@dataclass
class ServeProcess:
    """A running `forgellm serve`: its process, port and combined output (in a file: a pipe nobody
    reads would fill up and stall the server)."""

    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs: Any) -> openai.OpenAI:
        """An openai client without retries, so every error surfaces at once."""
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key="unused", max_retries=0, timeout=60, **kwargs)

    def request(self, method: str, path: str, body: Any = None, headers: dict | None = None) -> tuple[int, Any]:
        return http_request(self.port, method, path, body, headers)

    def health(self) -> int | None:
        return health_status(self.port)

    def wait_exit(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_serve(*options: str, faults: bool = False, launcher: tuple[str, ...] = ()) -> ServeProcess:
    """Start `forgellm serve` (the demo model unless options name one) and wait until /health is 200;
    `launcher`: python's arguments before `-m forgellm` (e.g. `-m torch.distributed.run ...`)."""
    port = free_port()
    entry = [str(FAULTY_SERVE)] if faults else [*launcher, "-m", "forgellm"]
    command = [sys.executable, *entry, "serve", "--port", str(port), "--log-level", "warning", *options]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.NamedTemporaryFile("w", prefix="forgellm-serve-", suffix=".log", delete=False) as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    served = ServeProcess(process, port, Path(log.name))
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while served.health() != 200:
        if process.poll() is not None or time.monotonic() > deadline:
            served.stop()
            raise RuntimeError(f"forgellm serve did not start:\n{served.output()}")
        time.sleep(0.1)
    return served
