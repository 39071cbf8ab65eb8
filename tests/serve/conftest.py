"""Real servers for the serve tests: uvicorn in a thread on 127.0.0.1, a free port, the demo model."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

import uvicorn  # noqa: E402

from forgellm.engine.async_engine import AsyncLLM  # noqa: E402
from forgellm.engine.process_engine import ProcessAsyncLLM  # noqa: E402
from forgellm.serve.app import build_app  # noqa: E402
from forgellm.serve.settings import ServerSettings  # noqa: E402
from tests.serve.http_helpers import http_request, wait_until  # noqa: E402

# float32: the reference CPU kernels are exact enough that greedy outputs match LLM.generate's.
ENGINE_DEFAULTS: dict[str, Any] = {"dtype": "float32", "max_model_len": 1024, "cpu_kv_cache_gb": 0.25}
STARTUP_TIMEOUT_S = 20.0
# The server tests run against the engine `forgellm serve` runs: ProcessAsyncLLM, in a child process.
# FORGELLM_TEST_ENGINE=thread runs them against AsyncLLM's engine thread instead.
ENGINE_CLASS: type[AsyncLLM] = AsyncLLM if os.environ.get("FORGELLM_TEST_ENGINE") == "thread" else ProcessAsyncLLM


@dataclass
class RunningServer:
    """A live server and its engine (tests may read the engine's stats directly)."""

    base_url: str
    engine: AsyncLLM
    settings: ServerSettings
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def langchain(self, **options: Any) -> Any:
        """LangChain's ChatOpenAI against this server, without retries (skips the test without langchain-openai)."""
        langchain_openai = pytest.importorskip("langchain_openai")
        defaults = {"model": self.settings.model_name, "base_url": f"{self.base_url}/v1", "api_key": "unused"}
        return langchain_openai.ChatOpenAI(**(defaults | {"max_retries": 0, "temperature": 0} | options))

    def client(self, api_key: str | None = None, **kwargs: Any) -> Any:
        """An openai client without retries, so every error surfaces at once."""
        key = api_key or self.settings.api_key or "unused"
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=key, max_retries=0, timeout=60, **kwargs)

    def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Poll `condition` every 20 ms until it holds or `timeout` passes (bounded, never hangs)."""
        return wait_until(condition, timeout)

    def request(
        self, method: str, path: str, body: bytes | dict | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """A plain HTTP request (for bodies the openai client would not send); returns (status, JSON or text)."""
        return http_request(self.port, method, path, body, headers)

    def metrics(self) -> str:
        return self.request("GET", "/metrics")[1]

    def is_idle(self) -> bool:
        """No request in the engine and every KV block free again."""
        stats = self.engine.stats()
        return stats.num_running == 0 and stats.num_waiting == 0 and stats.kv_cache_usage == 0.0

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.engine.shutdown()


def start_server(
    settings: ServerSettings | None = None, engine_class: type[AsyncLLM] | None = None, **engine_options: Any
) -> RunningServer:
    """Build an engine (ENGINE_CLASS unless a test needs one kind) and an app, and serve them from a
    background thread on a free local port."""
    engine = (engine_class or ENGINE_CLASS)(**{**ENGINE_DEFAULTS, **engine_options})
    settings = settings or ServerSettings()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # the kernel picks a free port; uvicorn serves on this very socket
    port = sock.getsockname()[1]
    config = uvicorn.Config(build_app(engine, settings), log_level="warning", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    running = RunningServer(f"http://127.0.0.1:{port}", engine, settings, server, thread)
    if not running.wait_until(lambda: server.started, STARTUP_TIMEOUT_S):
        running.stop()
        raise RuntimeError("the test server did not start")
    return running


@pytest.fixture(scope="session")
def demo_server() -> Iterator[RunningServer]:
    """The shared server: demo model, default settings. Tests must leave it idle."""
    running = start_server()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def server_factory() -> Iterator[Callable[..., RunningServer]]:
    """Start servers with special settings; all are stopped at the end of the session."""
    started: list[RunningServer] = []

    def make(
        settings: ServerSettings | None = None, engine_class: type[AsyncLLM] | None = None, **engine_options: Any
    ) -> RunningServer:
        started.append(start_server(settings, engine_class, **engine_options))
        return started[-1]

    yield make
    for running in started:
        running.stop()


def metric_value(text: str, name: str, labels: str = "") -> float:
    """One sample's value from Prometheus text (0 if absent), e.g. name='x_total', labels='{a="b"}'."""
    prefix = f"{name}{labels} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0
