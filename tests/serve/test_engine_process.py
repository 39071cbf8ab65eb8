"""ProcessAsyncLLM's own cases: the child's start-up, shutdown and death (the shared contract is in
test_engine_frontends.py)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from forgellm import SamplingParams
from forgellm.engine.process_engine import ProcessAsyncLLM
from forgellm.errors import EngineDeadError, ModelLoadError

OPTIONS = {"dtype": "float32", "max_model_len": 512, "cpu_kv_cache_gb": 0.1}
LONG = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)


def test_shutdown_ends_running_streams():
    engine = ProcessAsyncLLM(**OPTIONS)

    async def run() -> None:
        stream = engine.generate("x", LONG)
        await stream.__anext__()
        engine.shutdown()
        with pytest.raises(EngineDeadError, match="shut down"):
            async for _ in stream:
                pass

    asyncio.run(run())
    assert not engine.is_alive


def test_a_killed_engine_process_fails_every_stream_at_once():
    engine = ProcessAsyncLLM(**OPTIONS)

    async def run() -> None:
        streams = [engine.generate(p, LONG) for p in ("x", "y")]
        for stream in streams:
            await stream.__anext__()
        os.kill(engine._process.pid, signal.SIGKILL)
        for stream in streams:
            with pytest.raises(EngineDeadError, match=r"exited \(exit code -9\)"):
                async for _ in stream:
                    pass
        with pytest.raises(EngineDeadError):
            await engine.add_request("z", LONG)

    try:
        asyncio.run(run())
        assert not engine.is_alive and engine.exitcode == -signal.SIGKILL
    finally:
        engine.shutdown()


def test_a_model_that_fails_to_load_raises_at_construction(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        ProcessAsyncLLM(str(tmp_path / "missing"), **OPTIONS)
