"""Delta outputs (stream=True, delta=True): the engine emits only what each step added."""

from __future__ import annotations

import asyncio

from forgellm import LLM, SamplingParams
from forgellm.engine.async_engine import AsyncLLM
from forgellm.outputs import CompletionOutput, RequestOutput, merge_deltas

OPTIONS = {"dtype": "float32", "max_model_len": 512, "cpu_kv_cache_gb": 0.1}


def _joined(deltas: list[RequestOutput], n: int) -> list[tuple[str, list[int], int, list[str]]]:
    """Per sample: concatenated text, token ids, number of logprob positions, finish reasons seen."""
    joined = []
    for i in range(n):
        samples = [d.outputs[i] for d in deltas]
        assert all(s.index == i for s in samples)
        logprobs = sum(len(s.logprobs or []) for s in samples)
        reasons = [s.finish_reason for s in samples if s.finish_reason is not None]
        joined.append(("".join(s.text for s in samples), [t for s in samples for t in s.token_ids], logprobs, reasons))
    return joined


def test_engine_deltas_add_up_to_the_offline_result():
    llm = LLM(**OPTIONS)
    params = SamplingParams(n=2, temperature=0.8, seed=3, max_tokens=24, stop=["e"], logprobs=2, ignore_eos=True)
    llm.engine.add_request("d", "def main():", params, stream=True, delta=True)
    deltas = []
    while llm.engine.has_unfinished_requests():
        deltas.extend(llm.engine.step())
    assert deltas and all(d.delta for d in deltas) and deltas[-1].finished
    [offline] = llm.generate(["def main():"], params, use_tqdm=False)
    for (text, token_ids, num_logprobs, reasons), want in zip(_joined(deltas, 2), offline.outputs):
        assert (text, token_ids) == (want.text, want.token_ids)
        assert num_logprobs == len(want.token_ids)
        assert reasons == [want.finish_reason]  # each sample's finish comes exactly once


def test_llm_stream_stays_cumulative():
    llm = LLM(**OPTIONS)
    outs = list(llm.stream("import os", SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)))
    assert not any(o.delta for o in outs)
    assert [len(o.outputs[0].token_ids) for o in outs] == [1, 2, 3, 4, 5]


def test_async_delta_stream_matches_generate():
    engine = AsyncLLM(**OPTIONS)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    prompts = ["import sys", "class A:", "for i in range(3):"]

    async def one(prompt: str) -> list[RequestOutput]:
        return [out async for out in engine.generate(prompt, params, delta=True)]

    async def run() -> list[list[RequestOutput]]:
        return await asyncio.gather(*(one(p) for p in prompts))

    try:
        streamed = asyncio.run(run())
    finally:
        engine.shutdown()
    offline = LLM(**OPTIONS).generate(prompts, params, use_tqdm=False)
    for deltas, want in zip(streamed, offline):
        [(text, token_ids, _, reasons)] = _joined(deltas, 1)
        assert (text, token_ids, reasons) == (want.outputs[0].text, want.outputs[0].token_ids, ["length"])


def test_merge_deltas_concatenates_and_keeps_the_finish():
    def delta(text: str, ids: list[int], finish: str | None) -> RequestOutput:
        return RequestOutput("r", None, [1], [CompletionOutput(0, text, ids, finish_reason=finish)], delta=True)

    merged = merge_deltas(delta("ab", [5, 6], None), delta("c", [7], "stop"))
    assert (merged.outputs[0].text, merged.outputs[0].token_ids) == ("abc", [5, 6, 7])
    assert merged.outputs[0].finish_reason == "stop"
