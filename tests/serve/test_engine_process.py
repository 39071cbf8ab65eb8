"""ProcessAsyncLLM: the engine loop in a child process behaves as AsyncLLM's thread does."""

from __future__ import annotations

import asyncio

import pytest

from forgellm import LLM, SamplingParams
from forgellm.engine.process_engine import ProcessAsyncLLM
from forgellm.errors import ContextLengthError, EngineDeadError, InvalidRequestError, ModelLoadError
from tests.serve.engine_helpers import wait_engine_idle

OPTIONS = {"dtype": "float32", "max_model_len": 512, "cpu_kv_cache_gb": 0.1}
GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
LONG = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)


@pytest.fixture(scope="module", params=["off", "on"], ids=["sync", "async"])
def engine(request):
    """The engine process, stepping synchronously or with asynchronous scheduling (GPU default)."""
    llm = ProcessAsyncLLM(**OPTIONS, async_scheduling=request.param)
    yield llm
    llm.shutdown()


def test_cumulative_and_delta_streams_match_offline_generate(engine):
    prompts = ["import sys", "class A:", "for i in range(3):"]

    async def one(prompt: str, delta: bool) -> str:
        text = ""
        async for out in engine.generate(prompt, GREEDY, delta=delta):
            text = text + out.outputs[0].text if delta else out.outputs[0].text
            assert out.prompt_token_ids  # filled in by the server process, not sent each step
        return text

    async def run(delta: bool) -> list[str]:
        return await asyncio.gather(*(one(p, delta) for p in prompts))

    offline = [o.outputs[0].text for o in LLM(**OPTIONS).generate(prompts, GREEDY, use_tqdm=False)]
    assert asyncio.run(run(delta=False)) == offline
    assert asyncio.run(run(delta=True)) == offline


def test_leaving_the_stream_aborts_and_frees_kv(engine):
    async def run() -> None:
        async for out in engine.generate("x", LONG, delta=True):
            if out.outputs[0].token_ids:
                break

    asyncio.run(run())
    assert wait_engine_idle(engine)


def test_abort_by_id_ends_the_stream(engine):
    async def run() -> int:
        count = 0
        async for _ in engine.generate("x", LONG, request_id="victim", delta=True):
            count += 1
            engine.abort("victim")
        return count

    assert asyncio.run(run()) >= 1
    assert wait_engine_idle(engine)


def test_errors_are_typed(engine):
    async def run() -> None:
        with pytest.raises(ContextLengthError):
            await engine.generate(list(range(5, 600)), GREEDY).__anext__()
        first = engine.generate("x", LONG, request_id="same")
        await first.__anext__()
        with pytest.raises(InvalidRequestError):
            await engine.generate("y", GREEDY, request_id="same").__anext__()
        await first.aclose()

    asyncio.run(run())
    assert wait_engine_idle(engine)


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


def test_a_model_that_fails_to_load_raises_at_construction(tmp_path):
    with pytest.raises(ModelLoadError):
        ProcessAsyncLLM(str(tmp_path / "missing"), **OPTIONS)
