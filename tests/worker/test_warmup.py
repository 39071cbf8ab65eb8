"""The start-up warm-up runs real requests and leaves the engine as it found it."""

from __future__ import annotations

from forgellm.config import EngineConfig
from forgellm.engine.llm_engine import LLMEngine
from forgellm.worker.warmup import warm_up


def test_warm_up_leaves_no_trace(tiny_model_dir):
    engine = LLMEngine(EngineConfig(model=str(tiny_model_dir("llama")), dtype="float32", num_kv_blocks=40))
    kv = engine.core.kv_cache
    steps = []
    original_step = engine.core.step
    engine.core.step = lambda: steps.append(1) or original_step()
    warm_up(engine)  # on a GPU the engine runs this at start-up; here it is called by hand
    assert len(steps) > 10  # it really ran prefills and decodes
    assert not engine.has_unfinished_requests() and not engine.output_processor.requests
    assert kv.num_free_blocks == kv.num_blocks and kv.prefix_cache_hit_rate == 0.0
    assert kv.pool.num_cached_blocks == 0
