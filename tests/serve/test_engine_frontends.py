"""The contract of AsyncLLM's front-end, for the engine thread and the engine process alike.

Both share one front-end (admission, request ids, sinks) over different transports, so every test
here runs on the thread engine and on the process engine (with and without async scheduling).
"""

from __future__ import annotations

import asyncio

import pytest

from forgellm import LLM, SamplingParams
from forgellm.engine.async_engine import AsyncLLM
from forgellm.engine.process_engine import ProcessAsyncLLM
from forgellm.errors import ContextLengthError, InvalidRequestError, QueueFullError
from tests.serve.engine_helpers import wait_engine_idle

OPTIONS = {"dtype": "float32", "max_model_len": 512, "cpu_kv_cache_gb": 0.1, "max_num_seqs": 2}
GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
LONG = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)
MAX_WAITING = 3


@pytest.fixture(
    scope="module", params=[("thread", "off"), ("process", "off"), ("process", "on")], ids=lambda p: "-".join(p)
)
def engine(request):
    kind, scheduling = request.param
    engine_class = AsyncLLM if kind == "thread" else ProcessAsyncLLM
    llm = engine_class(**OPTIONS, async_scheduling=scheduling, max_waiting_requests=MAX_WAITING)
    yield llm
    llm.shutdown()


def test_cumulative_and_delta_streams_match_offline_generate(engine):
    prompts = ["import sys", "class A:", "for i in range(3):"]

    async def one(prompt: str, delta: bool) -> str:
        text = ""
        async for out in engine.generate(prompt, GREEDY, delta=delta):
            text = text + out.outputs[0].text if delta else out.outputs[0].text
            assert out.prompt_token_ids and out.prompt == prompt
        return text

    async def run(delta: bool) -> list[str]:
        return await asyncio.gather(*(one(p, delta) for p in prompts))

    offline = [o.outputs[0].text for o in LLM(**OPTIONS).generate(prompts, GREEDY, use_tqdm=False)]
    assert asyncio.run(run(delta=False)) == offline
    assert asyncio.run(run(delta=True)) == offline


def test_leaving_the_stream_aborts_it_in_the_engine(engine):
    aborted = engine.stats().num_aborted

    async def run() -> None:
        async for out in engine.generate("x", LONG, delta=True):
            if out.outputs[0].token_ids:
                break

    asyncio.run(run())
    assert wait_engine_idle(engine)
    assert engine.stats().num_aborted == aborted + 1  # aborted, not run to its 400 tokens


def test_dropping_a_stream_or_closing_it_unread_aborts_it(engine):
    aborted = engine.stats().num_aborted

    async def aborted_since(count: int) -> int:
        # Checked while this event loop lives: once it closes, outputs for nobody are aborted anyway.
        for _ in range(1000):
            if engine.stats().num_aborted >= aborted + count:
                break
            await asyncio.sleep(0.01)
        return engine.stats().num_aborted - aborted

    async def run() -> tuple[int, int]:
        dropped = await engine.add_request("x", LONG)
        async for _ in dropped:
            break  # RequestStream is no generator: leaving it relies on its finalizer
        del dropped
        after_drop = await aborted_since(1)
        unread = await engine.add_request("y", LONG)
        await unread.aclose()  # before its first output
        return after_drop, await aborted_since(2)

    assert asyncio.run(run()) == (1, 2)
    assert wait_engine_idle(engine)


def test_abort_by_id_ends_the_stream_with_finish_reason_abort(engine):
    aborted = engine.stats().num_aborted

    async def run() -> list:
        outputs = []
        async for out in engine.generate("x", LONG, request_id="victim"):
            outputs.append(out)
            if len(outputs) == 2:
                engine.abort("victim")
        return outputs

    outputs = asyncio.run(run())
    last = outputs[-1]
    assert last.finished and last.outputs[0].finish_reason == "abort"
    assert len(last.outputs[0].token_ids) < 400
    assert wait_engine_idle(engine)
    assert engine.stats().num_aborted == aborted + 1


def test_a_running_id_is_refused_and_a_finished_one_can_be_reused(engine):
    async def run() -> None:
        first = await engine.add_request("x", LONG, "same")
        with pytest.raises(InvalidRequestError, match="already in use"):
            await engine.add_request("y", GREEDY, "same")
        engine.abort("same")
        assert [out async for out in first][-1].outputs[0].finish_reason == "abort"
        # Reused at once: only its own outputs arrive, never the aborted request's late ones.
        again = [out async for out in engine.generate("class A:", GREEDY, "same")]
        alone = [out async for out in engine.generate("class A:", GREEDY)]
        assert again[-1].outputs[0].text == alone[-1].outputs[0].text
        assert again[-1].outputs[0].finish_reason == "length"

    asyncio.run(run())
    assert wait_engine_idle(engine)


def test_a_caller_chosen_id_cannot_reach_another_requests_samples(engine):
    async def run() -> None:
        params = SamplingParams(temperature=1.0, seed=3, n=2, max_tokens=12, ignore_eos=True)
        a = await engine.add_request("import os", params, "a")
        forged = await engine.add_request("x", GREEDY, "a#0")
        engine.abort("a#0")
        assert [out async for out in forged][-1].outputs[0].finish_reason == "abort"
        final = [out async for out in a][-1]
        assert [(c.finish_reason, len(c.token_ids)) for c in final.outputs] == [("length", 12), ("length", 12)]

    asyncio.run(run())
    assert wait_engine_idle(engine)


def test_the_waiting_queue_is_bounded_and_a_refusal_leaks_no_reservation(engine):
    async def run() -> None:
        # 2 seats (max_num_seqs) and 3 places: the sixth sequence is refused until one ends.
        streams = [await engine.add_request("x", LONG) for _ in range(2)]
        while engine.stats().num_running < 2:  # both seated
            await asyncio.sleep(0.01)
        streams += [await engine.add_request("x", LONG) for _ in range(3)]
        assert engine.num_waiting() == MAX_WAITING
        with pytest.raises(QueueFullError, match="limit 3"):
            await engine.add_request("x", GREEDY)
        with pytest.raises(InvalidRequestError, match="at most 3 may wait"):
            await engine.add_request("x", SamplingParams(n=4))
        for stream in streams:
            await stream.aclose()
        while engine.num_waiting():  # the aborts reach the engine
            await asyncio.sleep(0.01)
        # A request refused after its reservation (too long a prompt) gives its place back.
        with pytest.raises(ContextLengthError):
            await engine.add_request(list(range(5, 600)), GREEDY)

    asyncio.run(run())
    assert wait_engine_idle(engine)
    assert engine.num_waiting() == 0


def test_several_prompts_are_admitted_together_or_not_at_all(engine):
    async def run() -> None:
        with pytest.raises(ContextLengthError):
            await engine.add_requests(["ok", list(range(5, 600))], GREEDY, ["p0", "p1"])
        streams = await engine.add_requests(["ok", "fine"], GREEDY, ["p0", "p1"])  # the ids were released
        for request_id, stream in zip(["p0", "p1"], streams):
            outputs = [out async for out in stream]
            assert outputs[-1].request_id == request_id and outputs[-1].finished

    asyncio.run(run())
    assert wait_engine_idle(engine) and engine.num_waiting() == 0
