"""64 concurrent streaming greedy requests return exactly what LLM.generate returns for the same prompts."""

from __future__ import annotations

import asyncio

from forgellm import LLM, SamplingParams

NUM_REQUESTS = 64
MAX_TOKENS = 8


async def _stream_all(base_url: str, prompts: list[str]) -> list[str]:
    import openai

    async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60) as client:

        async def one(prompt: str) -> str:
            stream = await client.completions.create(
                model="forgellm-demo",
                prompt=prompt,
                max_tokens=MAX_TOKENS,
                temperature=0,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            return "".join([chunk.choices[0].text async for chunk in stream if chunk.choices])

        return await asyncio.gather(*(one(p) for p in prompts))


def test_64_concurrent_streams_equal_offline_generate(demo_server, monkeypatch):
    prompts = [f"def function_{i}(x, y):\n    return x {'+-*/%'[i % 5]} {i}" for i in range(NUM_REQUESTS)]
    # The requests must really share steps: count the requests each engine step delivers outputs for
    # (sampling the engine's gauges instead misses it on a GPU, where 8 tokens take milliseconds).
    engine = demo_server.engine
    deliver = engine._deliver
    per_step: list[int] = []

    def recording_deliver(outputs, refused):  # noqa: ANN001, ANN202
        per_step.append(len(outputs))
        return deliver(outputs, refused)

    monkeypatch.setattr(engine, "_deliver", recording_deliver)
    served = asyncio.run(_stream_all(demo_server.base_url, prompts))
    llm = LLM(dtype="float32", max_model_len=1024, cpu_kv_cache_gb=0.25)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    offline = [out.outputs[0].text for out in llm.generate(prompts, params, use_tqdm=False)]
    assert served == offline
    assert max(per_step) > 1
    assert demo_server.wait_until(demo_server.is_idle)
