"""EAGLE-3 heads in the published layout: loaded, drafting from the target's features, never changing outputs.

The heads here have random weights (tests/fixtures/make_eagle3_head.py), so they rarely guess right; what
is checked is that speculation with them gives plain decoding's tokens, that their KV blocks come back,
and that a head that does not fit the target is refused at start-up with a typed error.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from forgellm import LLM
from forgellm.errors import ConfigError, ModelLoadError
from forgellm.hf.config import load_model_config
from forgellm.models.eagle3 import load_eagle3_head
from forgellm.sampling_params import SamplingParams
from forgellm.spec_decode.eagle3_guesses import Eagle3Guesses
from forgellm.worker.forward_batch import SequenceChunk, build_host_batch
from forgellm.worker.kv_cache_memory import allocate_kv_cache
from tests.fixtures.make_eagle3_head import make_eagle3_head

PROMPT_IDS = [[11, 12, 13, 14, 15] * 3, [30, 31, 32, 33, 34, 35], list(range(40, 70))]


def eagle(path, k: int = 3) -> dict:  # noqa: ANN001
    return {"method": "eagle3", "model": str(path), "num_speculative_tokens": k}


def token_ids(llm: LLM, prompts: list, params) -> list[list[list[int]]]:
    return [[s.token_ids for s in out.outputs] for out in llm.generate(prompts, params, use_tqdm=False)]


@pytest.fixture(scope="module")
def target(tiny_model_dir):  # noqa: ANN201
    return tiny_model_dir("llama")


@pytest.mark.parametrize("own_embedding", [False, True])
def test_greedy_outputs_equal_plain_decoding(target, tmp_path, own_embedding: bool):
    vocab = json.loads((target / "config.json").read_text())["vocab_size"]
    head = make_eagle3_head(target, tmp_path / "head", draft_vocab_size=vocab // 2, own_embedding=own_embedding)
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    prompts = [{"prompt_token_ids": ids} for ids in PROMPT_IDS]
    plain = token_ids(LLM(str(target), dtype="float32", device="cpu", block_size=4), prompts, params)
    llm = LLM(str(target), dtype="float32", device="cpu", block_size=4, speculative_config=eagle(head))
    assert token_ids(llm, prompts, params) == plain
    stats = llm.engine.stats()
    assert stats.num_spec_steps > 0 and stats.num_draft_tokens >= 3 * stats.num_spec_steps - 3 * len(prompts)
    assert llm.engine.core.kv_cache.usage == 0.0


def test_sampling_penalties_and_a_prefix_cache_hit(target, tmp_path):
    """n = 2 shares the prompt through the prefix cache: the second sample finds the head's K/V of the prompt
    in the shared blocks and drafts too; both get plain decoding's tokens, seeded sampling reproduces."""
    head = make_eagle3_head(target, tmp_path / "head")
    plain = LLM(str(target), dtype="float32", device="cpu", block_size=4)
    llm = LLM(str(target), dtype="float32", device="cpu", block_size=4, speculative_config=eagle(head, 4))
    prompts = [{"prompt_token_ids": PROMPT_IDS[2]}]
    greedy = SamplingParams(temperature=0.0, max_tokens=20, n=2, ignore_eos=True, presence_penalty=0.5)
    assert token_ids(llm, prompts, greedy) == token_ids(plain, prompts, greedy)
    assert llm.engine.stats().num_spec_steps >= 2 * 15  # both samples verified drafts at (nearly) every step
    sampled = SamplingParams(temperature=1.0, top_p=0.9, seed=5, max_tokens=20, ignore_eos=True)
    assert token_ids(llm, prompts, sampled) == token_ids(llm, prompts, sampled)


def test_a_head_for_another_hidden_size_is_refused(target, tmp_path, tiny_model_dir):
    other = tiny_model_dir("llama-128")  # a target of hidden size 128
    head = make_eagle3_head(other, tmp_path / "head")
    with pytest.raises(ConfigError, match="hidden size 128 but the target model's is 64"):
        LLM(str(target), dtype="float32", device="cpu", speculative_config=eagle(head))


def test_not_an_eagle3_checkpoint_or_wrong_layers_are_refused(target, tmp_path):
    with pytest.raises(ModelLoadError, match="is not an EAGLE-3 head"):
        LLM(str(target), dtype="float32", device="cpu", speculative_config=eagle(target))
    head = make_eagle3_head(target, tmp_path / "head")
    config = json.loads((head / "config.json").read_text())
    config["eagle_aux_hidden_state_layer_ids"] = [1, 15, 29]
    (head / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"reads target layers \[1, 15, 29\] but the target has 2 layers"):
        LLM(str(target), dtype="float32", device="cpu", speculative_config=eagle(head))


def test_a_missing_tensor_is_named(target, tmp_path):
    head = make_eagle3_head(target, tmp_path / "head")
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(head / "model.safetensors"))
    del tensors["midlayer.hidden_norm.weight"]
    broken = tmp_path / "broken"
    shutil.copytree(head, broken)
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="midlayer.hidden_norm.weight"):
        LLM(str(target), dtype="float32", device="cpu", speculative_config=eagle(broken))


def test_a_narrower_head_needs_an_embedding_of_its_own(target, tmp_path):
    """A head narrower than the target (hidden 32 over 3 x 64 features) cannot share the 64-wide embedding;
    with its own it drafts, and outputs stay plain decoding's."""
    shared = make_eagle3_head(target, tmp_path / "shared", hidden_size=32)
    with pytest.raises(
        ModelLoadError, match="hidden size 32 and no embedding of its own, but the target's embedding is 64"
    ):
        LLM(str(target), dtype="float32", device="cpu", speculative_config=eagle(shared))
    own = make_eagle3_head(target, tmp_path / "own", hidden_size=32, own_embedding=True)
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    prompts = [{"prompt_token_ids": PROMPT_IDS[1]}]
    plain = token_ids(LLM(str(target), dtype="float32", device="cpu", block_size=4), prompts, params)
    llm = LLM(str(target), dtype="float32", device="cpu", block_size=4, speculative_config=eagle(own))
    assert token_ids(llm, prompts, params) == plain and llm.engine.stats().num_draft_tokens > 0


def test_a_d2t_of_the_wrong_size_is_named(target, tmp_path):
    from safetensors.torch import load_file, save_file

    head = make_eagle3_head(target, tmp_path / "head", draft_vocab_size=1024)
    tensors = load_file(str(head / "model.safetensors"))
    tensors["d2t"] = tensors["d2t"][:1000]
    save_file(tensors, str(head / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"'d2t' has shape \(1000,\), expected \(1024,\)"):
        LLM(str(target), dtype="float32", device="cpu", speculative_config=eagle(head))


def test_the_target_refuses_feature_layers_it_does_not_have(target):
    from forgellm.hf.config import load_model_config
    from forgellm.worker.model_runner import load_model

    model = load_model(target, load_model_config(target), torch.float32, torch.device("cpu"), "dummy")
    with pytest.raises(ValueError, match=r"aux hidden-state layers \(0, 1, 2\) outside the model's 2 layers"):
        model.capture_aux_hidden_states((0, 1, 2), 16)


def test_the_guess_loop_writes_only_each_rows_own_steps(target, tmp_path):
    """Rows of one guess loop that make 3, 1 and 2 further guesses: K/V changes at exactly their positions
    T - 1 .. T - 2 + steps (in their own blocks), nothing else; the guesses of the first steps do not depend
    on how many steps the other rows make."""
    arch = load_model_config(target)
    path = make_eagle3_head(target, tmp_path / "head", std=0.2, own_embedding=True)
    head = load_eagle3_head(path, arch, torch.float32, torch.device("cpu"))
    bs, num_blocks = 4, 12
    allocate_kv_cache(head, num_blocks, bs, torch.float32)
    attention = head.self_attn.attn
    torch.manual_seed(0)
    attention.k_cache.normal_()
    attention.v_cache.normal_()
    rows = [(7, [1, 2, 5]), (10, [3, 4, 6]), (5, [7, 8])]  # (T, blocks); guess 2 sits at position T - 1
    chunks = [SequenceChunk([0], t - 1, blocks, [0]) for t, blocks in rows]
    host = build_host_batch(chunks, bs)
    first = torch.tensor([5, 9, 13])
    hidden = torch.randn(3, arch.hidden_size)

    def run(steps: list[int], keep: bool = False) -> tuple[torch.Tensor, list, torch.Tensor]:
        before = attention.k_cache.clone()
        loop = Eagle3Guesses(head, 3, 4, 3, 64, bs)
        guesses = loop.run(host, torch.tensor(steps, dtype=torch.int32), first, hidden)
        after = attention.k_cache.clone()
        changed = (after != before).flatten(2).any(-1).nonzero().tolist()
        attention.k_cache.copy_(before)
        return guesses, changed, after

    mixed = [3, 1, 2]
    guesses, changed, after = run(mixed)
    expected = sorted([blocks[p // bs], p % bs] for (t, blocks), steps in zip(rows, mixed)
                      for p in range(t - 1, t - 1 + steps))  # fmt: skip
    assert sorted(changed) == expected
    full, _, after_full = run([3, 3, 3])
    assert torch.equal(guesses[0], full[0]) and torch.equal(guesses[:, 0], full[:, 0])
    for (t, blocks), steps in zip(rows, mixed):  # each row's K/V is what its own steps wrote, no later step's
        for p in range(t - 1, t - 1 + steps):
            assert torch.equal(after[blocks[p // bs], p % bs], after_full[blocks[p // bs], p % bs])
