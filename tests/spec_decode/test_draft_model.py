"""Draft-model speculation: a second model guesses, the target verifies; outputs are plain decoding's.

Greedy outputs are compared with plain decoding on tiny fixtures (a draft that always agrees: the
target itself; one that rarely does: another model) and on demo + demo-draft, batched with requests
that cannot speculate. The draft's own KV cache is checked for leaks across accepts, rejections,
aborts and preemptions, and for what happens when it runs out of blocks.
"""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch

from forgellm import LLM
from forgellm.engine.llm_engine import DEMO_MODEL_DIR
from forgellm.errors import ConfigError
from forgellm.sampling_params import SamplingParams
from forgellm.spec_decode.draft_kv_cache import DraftKVCache

DEMO_DRAFT = str(DEMO_MODEL_DIR.parent / "demo-draft")
PROMPT_IDS = [[11, 12, 13, 14, 15] * 3, [30, 31, 32, 33, 34, 35], list(range(40, 70))]


def draft_spec(path: str, k: int = 3) -> dict:
    return {"method": "draft_model", "model": str(path), "num_speculative_tokens": k}


def token_ids(llm: LLM, prompts: list, params) -> list[list[list[int]]]:
    return [[s.token_ids for s in out.outputs] for out in llm.generate(prompts, params, use_tqdm=False)]


def proposer(llm: LLM):  # noqa: ANN201 - the DraftModelProposer
    return llm.engine.core.spec_decoder.proposer


def assert_nothing_held(llm: LLM) -> None:
    assert not llm.engine.has_unfinished_requests()
    assert llm.engine.core.kv_cache.usage == 0.0
    kv = proposer(llm).kv
    assert kv.num_free_blocks == kv.pool.num_blocks and not kv.sequences


@pytest.mark.parametrize(("draft", "k"), [("llama", 4), ("qwen2", 3)])
def test_tiny_greedy_outputs_equal_plain_decoding(tiny_model_dir, draft: str, k: int):
    target = str(tiny_model_dir("llama"))
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    prompts = [{"prompt_token_ids": ids} for ids in PROMPT_IDS]
    plain = token_ids(LLM(target, dtype="float32", device="cpu", block_size=4), prompts, params)
    llm = LLM(
        target, dtype="float32", device="cpu", block_size=4, speculative_config=draft_spec(tiny_model_dir(draft), k)
    )
    assert token_ids(llm, prompts, params) == plain
    stats = llm.engine.stats()
    assert stats.num_draft_tokens > 0
    if draft == "llama":  # the target drafting for itself: every guess is right
        assert stats.num_accepted_tokens == stats.num_draft_tokens
        assert stats.num_accepted_per_position[0] == stats.num_spec_steps
    assert_nothing_held(llm)


@pytest.fixture(scope="module")
def demo_pair() -> tuple[LLM, LLM]:
    return LLM(device="cpu", block_size=4), LLM(
        device="cpu", block_size=4, speculative_config=draft_spec(DEMO_DRAFT, 4)
    )


def test_demo_draft_greedy_batch_with_plain_requests_equals_plain_decoding(demo_pair):
    plain, spec = demo_pair
    code = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n"
    prompts = [code, "Once upon a time", code + "    return", "import os\nimport sys\n", code]
    params = [
        SamplingParams(temperature=0.0, max_tokens=40),
        SamplingParams(temperature=0.0, max_tokens=33, n=2),
        SamplingParams(temperature=0.0, max_tokens=30, repetition_penalty=1.2),  # cannot speculate
        SamplingParams(temperature=0.0, max_tokens=30, logprobs=1),  # cannot speculate
        SamplingParams(temperature=0.0, max_tokens=64, stop=["a - b"]),  # stops inside a verify step's tokens
    ]
    before = spec.engine.stats()
    expected = plain.generate(prompts, params, use_tqdm=False)
    got = spec.generate(prompts, params, use_tqdm=False)
    for want, have in zip(expected, got, strict=True):
        assert [(s.token_ids, s.text, s.finish_reason) for s in have.outputs] == [
            (s.token_ids, s.text, s.finish_reason) for s in want.outputs
        ]
    after = spec.engine.stats()
    assert after.num_accepted_tokens - before.num_accepted_tokens > 0
    assert_nothing_held(spec)


def test_seeded_sampling_is_reproducible(demo_pair):
    _, spec = demo_pair
    params = SamplingParams(temperature=0.8, top_p=0.9, seed=3, max_tokens=30, ignore_eos=True, n=2)
    first = token_ids(spec, ["def main():\n"], params)
    assert first == token_ids(spec, ["def main():\n"], params)
    assert all(len(t) == 30 for t in first[0])
    assert_nothing_held(spec)


def test_random_aborts_and_preemptions_leak_no_block(tiny_model_dir):
    """Few target blocks force preemptions; aborts come at random steps; every block comes back in both caches."""
    target = str(tiny_model_dir("llama"))
    llm = LLM(
        target,
        dtype="float32",
        device="cpu",
        block_size=4,
        num_kv_blocks=24,
        max_num_seqs=6,
        speculative_config=draft_spec(tiny_model_dir("qwen2"), 4),
    )
    engine, rng = llm.engine, random.Random(0)
    for i in range(12):
        ids = [rng.randrange(3, 4000) for _ in range(rng.randrange(3, 20))]
        params = SamplingParams(temperature=rng.choice([0.0, 1.0]), seed=i, max_tokens=rng.randrange(5, 40))
        engine.add_request(f"r{i}", {"prompt_token_ids": ids}, params)
    steps = 0
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
        if steps % 5 == 0:
            running = [r.request_id for r in engine.core.scheduler.running]
            if running:
                engine.abort_request(rng.choice(running).split(":", 1)[1].rsplit("#", 1)[0])
    assert engine.stats().num_preemptions > 0
    llm.generate([{"prompt_token_ids": PROMPT_IDS[0]}], SamplingParams(max_tokens=5), use_tqdm=False)
    assert_nothing_held(llm)


def test_a_full_draft_cache_only_stops_drafting(tiny_model_dir):
    target = str(tiny_model_dir("llama"))
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    prompts = [{"prompt_token_ids": ids} for ids in PROMPT_IDS]
    plain = token_ids(LLM(target, dtype="float32", device="cpu", block_size=4), prompts, params)
    llm = LLM(target, dtype="float32", device="cpu", block_size=4, speculative_config=draft_spec(target))
    proposer(llm).kv = DraftKVCache(num_blocks=6, block_size=4)  # room for one short request's guesses
    assert token_ids(llm, prompts, params) == plain
    assert 0 < llm.engine.stats().num_draft_tokens


def test_draft_of_another_vocabulary_is_refused_at_start(tiny_model_dir, tmp_path):
    draft = tmp_path / "draft"
    shutil.copytree(tiny_model_dir("qwen2"), draft)
    config = json.loads((draft / "config.json").read_text())
    config["vocab_size"] = 32000
    (draft / "config.json").write_text(json.dumps(config))
    target = tiny_model_dir("llama")
    vocab = json.loads((target / "config.json").read_text())["vocab_size"]
    with pytest.raises(ConfigError, match=f"vocabulary of 32000 tokens but the target model's has {vocab}"):
        LLM(str(target), dtype="float32", device="cpu", speculative_config=draft_spec(draft))


def test_missing_draft_directory_is_refused_at_start(tiny_model_dir, tmp_path):
    with pytest.raises(Exception, match="does not exist|config.json"):
        LLM(str(tiny_model_dir("llama")), device="cpu", speculative_config=draft_spec(tmp_path / "nowhere"))


class TestDraftKVCache:
    def test_valid_tokens_stop_at_the_first_rejected_guess(self):
        kv = DraftKVCache(num_blocks=8, block_size=4)
        assert kv.reserve("r", 9) is not None and len(kv.sequences["r"].block_ids) == 3
        kv.record("r", 6, [7, 8, 9])  # tokens 0..5 were the request's; guesses 7, 8, 9 fed after them
        tokens = [0, 1, 2, 3, 4, 5]
        assert kv.num_valid_tokens("r", tokens + [7, 8, 5, 1]) == 8  # two guesses accepted, the third not
        assert kv.num_valid_tokens("r", tokens + [1]) == 6
        assert kv.num_valid_tokens("r", tokens) == 6
        assert kv.num_valid_tokens("unknown", tokens) == 0

    def test_reserve_grows_and_refuses_without_taking(self):
        kv = DraftKVCache(num_blocks=4, block_size=4)
        assert len(kv.reserve("a", 12)) == 3
        assert kv.reserve("b", 8) is None and kv.num_free_blocks == 1
        assert len(kv.reserve("b", 4)) == 1 and kv.num_free_blocks == 0
        kv.retain(["b"])
        assert kv.num_free_blocks == 3 and list(kv.sequences) == ["b"]
        kv.retain([])
        assert kv.num_free_blocks == 4


def test_penalties_min_tokens_and_logprobs_speculate_and_match_plain_decoding():
    """The verify step applies each position's penalties (drafts count as outputs) and min_tokens, and reports
    the emitted tokens' logprobs: the same tokens and logprobs as decoding one token at a time (float32, so
    the two computations' roundings stay far below the tolerance)."""
    plain = LLM(device="cpu", block_size=4, dtype="float32")
    spec = LLM(device="cpu", block_size=4, dtype="float32", speculative_config=draft_spec(DEMO_DRAFT, 4))
    code = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n"
    params = [
        SamplingParams(temperature=0.0, max_tokens=40, presence_penalty=0.4, frequency_penalty=0.3),
        SamplingParams(temperature=0.0, max_tokens=40, repetition_penalty=1.15),
        SamplingParams(temperature=0.0, max_tokens=30, min_tokens=20, logprobs=3),
    ]
    before = spec.engine.stats()
    expected = plain.generate([code] * 3, params, use_tqdm=False)
    got = spec.generate([code] * 3, params, use_tqdm=False)
    for want, have in zip(expected, got, strict=True):
        assert have.outputs[0].token_ids == want.outputs[0].token_ids
    assert spec.engine.stats().num_accepted_tokens > before.num_accepted_tokens  # these requests speculated
    want_lp, have_lp = expected[2].outputs[0].logprobs, got[2].outputs[0].logprobs
    assert len(have_lp) == len(want_lp) == 30
    for want_pos, have_pos in zip(want_lp, have_lp, strict=True):
        assert sorted(have_pos) == sorted(want_pos)  # the chosen token and the same top 3
        for token, entry in want_pos.items():
            assert have_pos[token].logprob == pytest.approx(entry.logprob, abs=1e-4)
            assert have_pos[token].rank == entry.rank


def test_guess_inputs_build_the_same_batches_with_or_without_staging():
    from forgellm.spec_decode.guess_inputs import GuessInputs
    from forgellm.worker.forward_batch import SequenceChunk, build_host_batch
    from forgellm.worker.pinned_staging import PinnedStaging

    inputs = GuessInputs(block_size=4, device=torch.device("cpu"))  # a CPU stages nothing by itself
    inputs.prepare(64, 8, 16, k=3)
    assert inputs.stagings == []
    # Staged the way a GPU stages (unpinned buffers here): every step's batch equals one built afresh, also
    # when a later, smaller step reuses buffers that an earlier, larger one filled.
    inputs.stagings = [PinnedStaging(64, 8, 16, pin=False) for _ in range(3)]
    big = [SequenceChunk(list(range(9)), 0, [0, 1, 2], list(range(9))), SequenceChunk([5, 6], 10, [3, 4, 5], [1])]
    small = [SequenceChunk([7], 3, [4], [0])]
    for index, chunks in ((0, big), (0, small), (2, big)):
        got, want = inputs.batch(chunks, index), build_host_batch(chunks, 4)
        for name in ("input_ids", "positions", "slot_mapping", "seq_lens", "query_start_loc", "block_tables"):
            assert torch.equal(getattr(got, name), getattr(want, name)), (index, name)
        assert got.input_ids.data_ptr() == inputs.stagings[index].buffers["input_ids"].data_ptr()
