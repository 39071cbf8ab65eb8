"""`forgellm serve --data-parallel-size 2`: two engine replicas (each a ProcessAsyncLLM) behind one server; 64
concurrent requests from the openai client are all answered, as one engine answers them, and both replicas
serve a share; an LLM refuses data_parallel_size > 1 by name."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from forgellm import LLM, EngineConfig, SamplingParams
from forgellm.engine.data_parallel import DataParallelEngine
from forgellm.engine.process_engine import ProcessAsyncLLM
from forgellm.errors import ConfigError


def two_replicas(**options: Any) -> DataParallelEngine:
    return DataParallelEngine.start(ProcessAsyncLLM, EngineConfig(**options, data_parallel_size=2))


def test_64_requests_spread_over_two_replicas(server_factory) -> None:
    server = server_factory(engine_class=two_replicas)
    engine: DataParallelEngine = server.engine
    assert len(engine.replicas) == 2 and engine.is_alive
    prompts = [f"def function_{i}(x):" for i in range(64)]
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    expected = [o.outputs[0].text for o in LLM(dtype="float32").generate(prompts, params, use_tqdm=False)]
    client = server.client()

    def ask(prompt: str) -> str:
        reply = client.completions.create(
            model=server.settings.model_name,
            prompt=prompt,
            max_tokens=6,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        return reply.choices[0].text

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(ask, prompts)) == expected
    assert all(count > 0 for count in engine.routed) and sum(engine.routed) == 64, engine.routed


def test_an_llm_is_one_engine() -> None:
    with pytest.raises(ConfigError, match="data_parallel_size > 1 runs engine replicas behind forgellm serve"):
        LLM(data_parallel_size=2)
