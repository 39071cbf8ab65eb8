"""OutputSink: one merged output per request however far its reader falls behind, then the error."""

from __future__ import annotations

import asyncio
import threading

from forgellm.engine.output_sink import OutputSink
from forgellm.errors import EngineDeadError
from forgellm.outputs import CompletionOutput, RequestOutput


def output(text: str, tokens: list[int], delta: bool, finish: str | None = None) -> RequestOutput:
    sample = CompletionOutput(0, text, tokens, finish_reason=finish)
    return RequestOutput("r", "p", [1], [sample], finished=finish is not None, delta=delta)


def test_deltas_put_while_unread_are_merged_into_one():
    async def run() -> list:
        sink = OutputSink(asyncio.get_running_loop())
        puts = [output("a", [1], True), output("b", [2], True), output("c", [3], True, finish="length")]
        thread = threading.Thread(target=lambda: [sink.put(o) for o in puts])  # the engine's thread
        thread.start()
        thread.join()
        return [await sink.get()]

    [merged] = asyncio.run(run())
    assert merged.outputs[0].text == "abc" and merged.outputs[0].token_ids == [1, 2, 3]
    assert merged.finished and merged.outputs[0].finish_reason == "length"


def test_a_newer_cumulative_output_replaces_the_unread_one():
    async def run() -> RequestOutput:
        sink = OutputSink(asyncio.get_running_loop())
        sink.put(output("a", [1], False))
        sink.put(output("ab", [1, 2], False))
        return await sink.get()

    assert asyncio.run(run()).outputs[0].text == "ab"


def test_the_error_comes_after_the_outputs_before_it():
    async def run() -> list:
        sink = OutputSink(asyncio.get_running_loop())
        sink.put(output("a", [1], True))
        sink.put(EngineDeadError("gone"))
        sink.put(EngineDeadError("a later one"))  # the first error is the one that counts
        return [await sink.get(), await sink.get()]

    first, second = asyncio.run(run())
    assert isinstance(first, RequestOutput) and first.outputs[0].text == "a"
    assert isinstance(second, EngineDeadError) and str(second) == "gone"


def test_a_reader_waiting_is_woken_by_a_put_from_another_thread():
    async def run() -> RequestOutput:
        sink = OutputSink(asyncio.get_running_loop())
        threading.Timer(0.05, lambda: sink.put(output("late", [9], True))).start()
        return await asyncio.wait_for(sink.get(), timeout=30)

    assert asyncio.run(run()).outputs[0].text == "late"


def test_put_says_false_once_the_readers_loop_is_closed():
    loop = asyncio.new_event_loop()
    sink = OutputSink(loop)
    loop.close()
    assert sink.put(output("x", [1], True)) is False
