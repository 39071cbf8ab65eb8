"""AsyncLLM's engine thread: cancellation, a loop that fails, shutdown (the shared contract is in
test_engine_frontends.py)."""

from __future__ import annotations

import asyncio

import pytest

from forgellm import SamplingParams
from forgellm.engine.async_engine import AsyncLLM
from forgellm.errors import EngineDeadError
from tests.serve.engine_helpers import wait_engine_idle

OPTIONS = {"dtype": "float32", "max_model_len": 512, "cpu_kv_cache_gb": 0.1}
GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


@pytest.fixture
def engine():
    llm = AsyncLLM(**OPTIONS)
    yield llm
    llm.shutdown()


def test_cancelled_task_aborts(engine):
    async def run() -> None:
        async def consume() -> None:
            async for _ in engine.generate("x", SamplingParams(max_tokens=400, ignore_eos=True)):
                pass

        task = asyncio.ensure_future(consume())
        while engine.stats().kv_cache_usage == 0.0:
            await asyncio.sleep(0.005)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())
    assert wait_engine_idle(engine)


def test_a_failure_outside_the_step_isolation_fails_every_stream_and_later_requests(engine):
    # EngineCore contains a failed step (tests/engine/test_failure_isolation.py); what escapes the
    # engine loop leaves the engine in an unknown state, so it is declared dead.
    def broken_step():
        raise RuntimeError("boom")

    async def run() -> None:
        stream = engine.generate("x", SamplingParams(max_tokens=400, ignore_eos=True))
        await stream.__anext__()
        engine.engine.step = broken_step
        with pytest.raises(EngineDeadError, match="boom"):
            async for _ in stream:
                pass
        with pytest.raises(EngineDeadError):
            await engine.generate("y", GREEDY).__anext__()

    asyncio.run(run())
    assert not engine.is_alive


def test_shutdown_ends_running_streams():
    engine = AsyncLLM(**OPTIONS)

    async def run() -> None:
        stream = engine.generate("x", SamplingParams(max_tokens=400, ignore_eos=True))
        await stream.__anext__()
        engine.shutdown()
        with pytest.raises(EngineDeadError, match="shut down"):
            async for _ in stream:
                pass

    asyncio.run(run())
