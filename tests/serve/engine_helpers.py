"""Helpers shared by the AsyncLLM and ProcessAsyncLLM tests."""

from __future__ import annotations

import time
from typing import Any


def wait_engine_idle(engine: Any, timeout: float = 10.0) -> bool:
    """True once nothing runs or waits and the KV cache is empty again (polls engine.stats())."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = engine.stats()
        if stats.num_running == 0 and stats.num_waiting == 0 and stats.kv_cache_usage == 0.0:
            return True
        time.sleep(0.01)
    return False
