"""Speculative decoding end to end on the CPU: n-gram drafts verified by the target change speed, not output.

Greedy outputs are compared with plain decoding (speculation off) on the tiny fixtures and on the demo,
mixed with requests that cannot speculate (penalties, logprobs), with n > 1, stop strings and max_tokens;
seeded sampling stays valid; every KV block comes back, also after aborts mid-generation.
"""

from __future__ import annotations

import pytest

from forgellm import LLM
from forgellm.config import EngineConfig
from forgellm.engine.llm_engine import LLMEngine
from forgellm.engine.request import Request
from forgellm.errors import ConfigError
from forgellm.sampling_params import SamplingParams
from forgellm.spec_decode.config import SpeculativeConfig
from forgellm.spec_decode.decoder import SpeculativeDecoder
from forgellm.worker.warmup import warm_up

NGRAM = {"method": "ngram", "num_speculative_tokens": 4}
PYTHON_PROMPT = (
    "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\n"
    "def mul(a, b):\n    return a * b\n\n\ndef div(a, b):\n    return a / b\n\n\ndef"
)
# Repeated n-grams, so the proposer finds earlier occurrences from the first step on.
REPEATED_IDS = [[11, 12, 13, 14, 15] * 4, [30, 31, 32, 33] * 3 + [30, 31], list(range(40, 60)) + [40, 41, 42]]


def generate(llm: LLM, prompts: list, params) -> list[list[list[int]]]:
    return [[s.token_ids for s in out.outputs] for out in llm.generate(prompts, params, use_tqdm=False)]


def assert_no_blocks_held(llm: LLM) -> None:
    engine = llm.engine
    assert not engine.has_unfinished_requests()
    assert engine.core.kv_cache.usage == 0.0


@pytest.mark.parametrize("variant", ["llama", "mistral-swa"])
def test_greedy_outputs_equal_plain_decoding_on_tiny_models(tiny_model_dir, variant: str):
    path = str(tiny_model_dir(variant))
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    prompts = [{"prompt_token_ids": ids} for ids in REPEATED_IDS]
    plain = generate(LLM(path, dtype="float32", device="cpu", block_size=4), prompts, params)
    llm = LLM(path, dtype="float32", device="cpu", block_size=4, speculative_config=NGRAM)
    assert generate(llm, prompts, params) == plain
    stats = llm.engine.stats()
    assert stats.num_draft_tokens > 0 and stats.num_accepted_tokens > 0
    assert stats.num_accepted_tokens == sum(stats.num_accepted_per_position)
    assert_no_blocks_held(llm)


@pytest.fixture(scope="module")
def demo_plain() -> LLM:
    return LLM(device="cpu", block_size=4)


@pytest.fixture(scope="module")
def demo_spec() -> LLM:
    return LLM(device="cpu", block_size=4, speculative_config=NGRAM)


def test_demo_greedy_batch_mixed_with_plain_requests_equals_plain_decoding(demo_plain: LLM, demo_spec: LLM):
    prompts = [PYTHON_PROMPT, PYTHON_PROMPT + " mod", PYTHON_PROMPT, "The cat sat on the mat. The cat sat on"]
    prompts.append(PYTHON_PROMPT)
    params = [
        SamplingParams(temperature=0.0, max_tokens=48),
        SamplingParams(temperature=0.0, max_tokens=33, n=2),
        SamplingParams(temperature=0.0, max_tokens=40, presence_penalty=0.5),  # cannot speculate
        SamplingParams(temperature=0.0, max_tokens=30, logprobs=2),  # cannot speculate
        # Completed by a token in the middle of a verify step's emitted tokens: the rest is dropped.
        SamplingParams(temperature=0.0, max_tokens=64, stop=["b\n\n\ndef mul(a"]),
    ]
    before = demo_spec.engine.stats()
    expected = demo_plain.generate(prompts, params, use_tqdm=False)
    got = demo_spec.generate(prompts, params, use_tqdm=False)
    for want, have in zip(expected, got, strict=True):
        assert [s.token_ids for s in have.outputs] == [s.token_ids for s in want.outputs]
        assert [s.text for s in have.outputs] == [s.text for s in want.outputs]
        assert [s.finish_reason for s in have.outputs] == [s.finish_reason for s in want.outputs]
    assert got[1].outputs[0].token_ids == got[1].outputs[1].token_ids and len(got[1].outputs[0].token_ids) <= 33
    assert got[4].outputs[0].finish_reason == "stop" and got[4].outputs[0].stop_reason == "b\n\n\ndef mul(a"
    assert len(got[3].outputs[0].logprobs) == len(got[3].outputs[0].token_ids)
    after = demo_spec.engine.stats()
    assert after.num_draft_tokens > before.num_draft_tokens
    assert after.num_accepted_tokens > before.num_accepted_tokens
    assert_no_blocks_held(demo_spec)


def test_demo_sampling_with_seeds_gives_valid_outputs(demo_spec: LLM):
    params = [
        SamplingParams(temperature=0.8, seed=seed, max_tokens=24, ignore_eos=True, top_k=top_k, top_p=top_p)
        for seed, top_k, top_p in ((1, 0, 1.0), (2, 20, 1.0), (3, 0, 0.9))
    ]
    before = demo_spec.engine.stats().num_draft_tokens
    first = demo_spec.generate([PYTHON_PROMPT] * 3, params, use_tqdm=False)
    vocab = demo_spec.engine.arch.vocab_size
    for out in first:
        (sample,) = out.outputs
        assert len(sample.token_ids) == 24 and sample.finish_reason == "length"
        assert all(0 <= t < vocab for t in sample.token_ids)
    assert demo_spec.engine.stats().num_draft_tokens > before
    # A seeded request depends on its seed only, not on its companions or on earlier requests.
    again = demo_spec.generate([PYTHON_PROMPT], params[1], use_tqdm=False)
    assert again[0].outputs[0].token_ids == first[1].outputs[0].token_ids
    assert_no_blocks_held(demo_spec)


def test_rollback_and_no_leaks_with_aborts_mid_generation(tiny_model_dir):
    config = EngineConfig(
        model=str(tiny_model_dir("llama")), dtype="float32", device="cpu", block_size=4, speculative_config=NGRAM
    )
    engine = LLMEngine(config)
    params = SamplingParams(temperature=0.0, max_tokens=60, ignore_eos=True)
    for i, ids in enumerate(REPEATED_IDS * 2):
        engine.add_request(f"r{i}", {"prompt_token_ids": ids}, params)
    steps = 0
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
        for request in engine.core.scheduler.running:
            # Every running request resumes from its last emitted token: rejected drafts are recomputed.
            assert request.num_computed_tokens <= request.num_tokens - 1
        if steps == 4:
            engine.abort_request("r1")
            engine.abort_request("r4")
    assert engine.stats().num_accepted_tokens > 0
    assert engine.core.kv_cache.usage == 0.0 and engine.core.kv_cache.num_free_blocks == engine.core.kv_cache.num_blocks


def test_disable_by_batch_size_turns_speculation_off(tiny_model_dir):
    spec = {**NGRAM, "disable_by_batch_size": 2}
    llm = LLM(str(tiny_model_dir("llama")), dtype="float32", device="cpu", speculative_config=spec)
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    generate(llm, [{"prompt_token_ids": ids} for ids in REPEATED_IDS], params)  # 3 running: no drafts
    assert llm.engine.stats().num_draft_tokens == 0
    generate(llm, [{"prompt_token_ids": ids} for ids in REPEATED_IDS[1:]], params)
    assert llm.engine.stats().num_draft_tokens > 0


def test_drafts_never_pass_max_model_len(tiny_model_dir):
    llm = LLM(str(tiny_model_dir("llama")), dtype="float32", device="cpu", max_model_len=24, speculative_config=NGRAM)
    out = llm.generate(
        [{"prompt_token_ids": REPEATED_IDS[0]}], SamplingParams(temperature=0.0, max_tokens=None, ignore_eos=True)
    )
    assert len(out[0].outputs[0].token_ids) == 24 - 20 and out[0].outputs[0].finish_reason == "length"
    assert_no_blocks_held(llm)


def test_k_too_large_for_the_context_is_a_config_error(tiny_model_dir):
    spec = {"method": "ngram", "num_speculative_tokens": 10}
    with pytest.raises(ConfigError, match="num_speculative_tokens is 10 but max_model_len is 8"):
        LLM(str(tiny_model_dir("llama")), dtype="float32", device="cpu", max_model_len=8, speculative_config=spec)


@pytest.mark.parametrize(
    ("max_model_len", "max_tokens", "expected"),
    [(100, 50, [2, 3, 4]), (13, 50, [2]), (12, 50, []), (100, 3, [2]), (100, 2, [])],
)
def test_proposals_keep_the_verify_step_within_the_context_and_max_tokens(max_model_len, max_tokens, expected):
    decoder = SpeculativeDecoder(SpeculativeConfig(method="ngram", num_speculative_tokens=3), max_model_len)
    prompt = [1, 2, 3, 4, 5, 1, 2, 3, 4, 5]
    request = Request("r", prompt, SamplingParams(max_tokens=max_tokens), max_tokens)
    request.append_token(1)  # 11 tokens, decoding: the K/V of all but the last is computed
    request.num_computed_tokens = len(prompt)
    decoder.propose([request])
    # d drafts emit up to d + 1 tokens and write K/V up to position 10 + d.
    assert request.spec_token_ids == expected


def test_warm_up_leaves_the_acceptance_counters_at_zero(tiny_model_dir):
    engine = LLMEngine(
        EngineConfig(model=str(tiny_model_dir("llama")), dtype="float32", num_kv_blocks=40, speculative_config=NGRAM)
    )
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    for i, ids in enumerate(REPEATED_IDS):  # speculate first, so the counters have something to forget
        engine.add_request(f"r{i}", {"prompt_token_ids": ids}, params)
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.stats().num_draft_tokens > 0
    warm_up(engine)
    stats = engine.stats()
    assert (stats.num_draft_tokens, stats.num_accepted_tokens, stats.num_accepted_per_position) == (0, 0, (0,) * 4)
