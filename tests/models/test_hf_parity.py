"""Parity with Hugging Face transformers on tiny random models of every supported architecture.

float32 logits within 1e-4 of transformers' for a batch of prompts of different lengths, and greedy
tokens identical to transformers' `generate` — batched, with chunked prefill, with a prefix served
from the cache, and with requests preempted and recomputed.
"""

from __future__ import annotations

import pytest
import torch

from forgellm import LLM, SamplingParams
from forgellm.worker.forward_batch import SequenceChunk, build_forward_batch
from tests.fixtures.make_tiny_models import VARIANTS

transformers = pytest.importorskip("transformers")

NEW_TOKENS = 8
GREEDY = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)


def hf_model(path):
    # A fresh model per use: HF's dynamic-NTK rotary keeps state across calls.
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def hf_greedy(path, prompts: list[list[int]]) -> list[list[int]]:
    out = []
    for prompt in prompts:
        model = hf_model(path)
        ids = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
        out.append(ids[0, len(prompt) :].tolist())
    return out


def random_prompts(lengths, seed=0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 4096, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_transformers(variant, tiny_model_dir):
    """Prefill a batch of prompts of different lengths in one ForwardBatch; compare every position."""
    path = tiny_model_dir(variant)
    llm = LLM(str(path), dtype="float32", num_kv_blocks=64, block_size=4)
    runner = llm.engine.core.runner
    prompts = random_prompts([3, 11, 40])
    chunks, next_block = [], 0
    for prompt in prompts:
        blocks = list(range(next_block, next_block + -(-len(prompt) // 4)))
        next_block += len(blocks)
        chunks.append(SequenceChunk(prompt, 0, blocks, list(range(len(prompt)))))
    batch = build_forward_batch(chunks, 4, runner.device)
    with torch.inference_mode():
        logits = runner.model.compute_logits(runner.model(batch.input_ids, batch.positions, batch))
    offset = 0
    for prompt in prompts:
        with torch.no_grad():
            ref = hf_model(path)(torch.tensor([prompt])).logits[0]
        ours = logits[offset : offset + len(prompt)].cpu()
        offset += len(prompt)
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_batched_matches_transformers(variant, tiny_model_dir):
    path = tiny_model_dir(variant)
    prompts = random_prompts([5, 17, 40, 2], seed=1)
    llm = LLM(str(path), dtype="float32")
    outs = llm.generate(prompts, GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == hf_greedy(path, prompts)


@pytest.mark.parametrize("variant", ["llama", "qwen3", "mistral-swa", "llama-mqa-dynamic"])
def test_greedy_chunked_prefill_matches_transformers(variant, tiny_model_dir):
    """A 7-token budget splits every prompt over several steps, mixed with other requests' decodes."""
    path = tiny_model_dir(variant)
    prompts = random_prompts([23, 9, 31], seed=2)
    llm = LLM(str(path), dtype="float32", max_num_batched_tokens=7, block_size=4)
    outs = llm.generate(prompts, GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == hf_greedy(path, prompts)


@pytest.mark.parametrize("variant", ["llama", "qwen2", "mistral-swa"])
def test_greedy_with_cached_prefix_matches_transformers(variant, tiny_model_dir):
    path = tiny_model_dir(variant)
    shared = random_prompts([24], seed=3)[0]
    tails = random_prompts([3, 6], seed=4)
    llm = LLM(str(path), dtype="float32", block_size=4)
    llm.generate([shared + [7]], GREEDY, use_tqdm=False)  # fills the prefix cache
    prompts = [shared + tail for tail in tails]
    outs = llm.generate(prompts, GREEDY, use_tqdm=False)
    assert all(o.num_cached_tokens >= 24 for o in outs), [o.num_cached_tokens for o in outs]
    assert [o.outputs[0].token_ids for o in outs] == hf_greedy(path, prompts)


@pytest.mark.parametrize("variant", ["llama", "qwen3"])
def test_greedy_with_preemption_matches_transformers(variant, tiny_model_dir):
    """So few KV blocks that running requests must be preempted and recomputed."""
    path = tiny_model_dir(variant)
    prompts = random_prompts([10, 12, 9, 11], seed=5)
    llm = LLM(str(path), dtype="float32", block_size=4, num_kv_blocks=12, enable_prefix_caching=False)
    outs = llm.generate(prompts, GREEDY, use_tqdm=False)
    assert llm.engine.stats().num_preemptions > 0
    assert [o.outputs[0].token_ids for o in outs] == hf_greedy(path, prompts)
    assert llm.engine.core.kv_cache.num_free_blocks == 12
