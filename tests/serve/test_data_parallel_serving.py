"""`forgellm serve --data-parallel-size 2`: two engine replicas (each a ProcessAsyncLLM) behind one server; 64
concurrent requests from the openai client are all answered, as one engine answers them, and both replicas
serve a share; questions about one document reach the replica whose prefix cache holds it; an LLM refuses
data_parallel_size > 1 by name."""

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


def test_questions_about_one_document_reach_the_replica_that_caches_it(server_factory) -> None:
    """Three documents, four questions each, one after another: each document's questions after the first go to
    the replica that served it (plain least-loaded routing would alternate), so their prompts hit its prefix
    cache; usage reports the cached tokens."""
    server = server_factory(engine_class=two_replicas)
    engine: DataParallelEngine = server.engine
    client = server.client()
    documents = [
        f"Document {d}: " + " ".join(f"fact {d}.{i} is about topic {i * d}." for i in range(12)) for d in range(3)
    ]
    cached = {}
    for d, document in enumerate(documents):
        for q in range(4):
            reply = client.completions.create(
                model=server.settings.model_name, prompt=f"{document}\nQuestion {q}: why?", max_tokens=2, temperature=0
            )
            details = reply.usage.prompt_tokens_details
            cached[d, q] = details.cached_tokens if details is not None else 0
    assert all(cached[d, q] >= 32 for d in range(3) for q in range(1, 4)), cached  # the document's blocks
    assert engine.router.prefix_hits > 0 and all(count > 0 for count in engine.routed), engine.routed
