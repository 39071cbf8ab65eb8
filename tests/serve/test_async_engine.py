"""AsyncLLM: streams per request, abort on early exit, typed errors, engine death and shutdown."""

from __future__ import annotations

import asyncio

import pytest

from forgellm import LLM, SamplingParams
from forgellm.engine.async_engine import AsyncLLM
from forgellm.errors import ContextLengthError, EngineDeadError, InvalidRequestError
from tests.serve.engine_helpers import wait_engine_idle

OPTIONS = {"dtype": "float32", "max_model_len": 512, "cpu_kv_cache_gb": 0.1}
GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


@pytest.fixture
def engine():
    llm = AsyncLLM(**OPTIONS)
    yield llm
    llm.shutdown()


def test_streams_match_offline_generate(engine):
    prompts = ["import sys", "class A:", "for i in range(3):"]

    async def run() -> list[list[str]]:
        async def one(prompt: str) -> list[str]:
            return [out.outputs[0].text async for out in engine.generate(prompt, GREEDY)]

        return await asyncio.gather(*(one(p) for p in prompts))

    streamed = asyncio.run(run())
    offline = LLM(**OPTIONS).generate(prompts, GREEDY, use_tqdm=False)
    for texts, out in zip(streamed, offline):
        assert texts[-1] == out.outputs[0].text
        assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:]))  # cumulative


def test_leaving_the_stream_aborts_and_frees_kv(engine):
    async def run() -> None:
        params = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)
        async for out in engine.generate("x", params):
            if len(out.outputs[0].token_ids) >= 3:
                break

    asyncio.run(run())
    assert wait_engine_idle(engine)


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


def test_bad_prompt_raises_typed_error_without_queuing(engine):
    async def run() -> None:
        with pytest.raises(ContextLengthError):
            async for _ in engine.generate(list(range(5, 600)), GREEDY):
                pass

    asyncio.run(run())
    assert engine.num_waiting() == 0 and engine.is_alive


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


def test_abort_by_id_ends_the_stream(engine):
    async def run() -> list:
        outputs = []
        async for out in engine.generate("x", SamplingParams(max_tokens=400, ignore_eos=True), request_id="r1"):
            outputs.append(out)
            if len(outputs) == 2:
                engine.abort("r1")
        return outputs

    aborted_before = engine.stats().num_aborted
    outputs = asyncio.run(run())
    assert 2 <= len(outputs) < 400 and all(not out.finished for out in outputs[:-1])
    last = outputs[-1]
    assert last.finished and last.outputs[0].finish_reason == "abort"
    assert len(last.outputs[0].token_ids) >= len(outputs[-2].outputs[0].token_ids)  # cumulative to the end
    assert wait_engine_idle(engine)
    assert engine.stats().num_aborted == aborted_before + 1


def test_duplicate_request_id_fails_alone(engine):
    async def run() -> None:
        first = engine.generate("x", SamplingParams(max_tokens=30, ignore_eos=True), request_id="same")
        await first.__anext__()
        with pytest.raises(InvalidRequestError, match="already in use"):
            await engine.generate("y", GREEDY, request_id="same").__anext__()
        outputs = [out async for out in first]
        assert outputs[-1].finished and len(outputs[-1].outputs[0].token_ids) == 30  # not aborted

    asyncio.run(run())
