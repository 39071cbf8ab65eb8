"""The LLM API's behaviour: samples, seeds, stops, logprobs, streaming and aborts."""

from __future__ import annotations

import pytest
import torch

from forgellm import LLM, SamplingParams

PROMPT = [11, 305, 2048, 7, 99, 1500, 3, 42]


@pytest.fixture(scope="module")
def llm(tiny_model_dir) -> LLM:
    return LLM(str(tiny_model_dir("llama")), dtype="float32", block_size=4)


def greedy(max_tokens: int = 12, **kwargs) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, **kwargs)


def test_output_fields(llm):
    out = llm.generate("def add(a, b):", greedy(5))[0]
    assert out.prompt == "def add(a, b):"
    assert out.prompt_token_ids == llm.get_tokenizer().encode("def add(a, b):")
    completion = out.outputs[0]
    assert len(completion.token_ids) == 5 and completion.finish_reason == "length"
    assert completion.text == llm.get_tokenizer().decode(completion.token_ids)
    assert out.finished and out.metrics.first_token_time >= out.metrics.arrival_time


def test_seeded_sampling_reproduces_whatever_the_batch(llm):
    params = SamplingParams(temperature=1.0, seed=1234, max_tokens=10, ignore_eos=True)
    alone = llm.generate([PROMPT], params, use_tqdm=False)[0].outputs[0].token_ids
    other = SamplingParams(temperature=1.0, max_tokens=10, ignore_eos=True)
    batched = llm.generate([PROMPT[:3], PROMPT, PROMPT[2:]], [other, params, other], use_tqdm=False)
    assert batched[1].outputs[0].token_ids == alone
    different = llm.generate([PROMPT], SamplingParams(temperature=1.0, seed=4321, max_tokens=10, ignore_eos=True))
    assert different[0].outputs[0].token_ids != alone


def test_n_samples_share_the_prompt(llm):
    kv = llm.engine.core.kv_cache
    kv.reset_prefix_cache()
    prompt = list(range(100, 140))  # 10 full blocks of 4 tokens
    out = llm.generate([prompt], SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=6, ignore_eos=True))[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert all(len(c.token_ids) == 6 for c in out.outputs)
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1  # independent samples
    assert kv.prefix_cache_hit_rate > 0  # siblings found the first sample's prompt blocks
    assert kv.num_free_blocks == kv.num_blocks


def test_stop_string_trims_text(llm):
    full = llm.generate([PROMPT], greedy(16))[0].outputs[0]
    stop = full.text[6:9]
    cut = full.text.index(stop)
    out = llm.generate([PROMPT], greedy(16, stop=[stop]))[0].outputs[0]
    assert out.text == full.text[:cut]
    assert (out.finish_reason, out.stop_reason) == ("stop", stop)
    kept = llm.generate([PROMPT], greedy(16, stop=[stop], include_stop_str_in_output=True))[0].outputs[0]
    assert kept.text == full.text[: cut + len(stop)]


def test_stop_strings_wait_for_min_tokens(llm):
    full = llm.generate([PROMPT], greedy(16))[0].outputs[0]
    stop = full.text[1:3]
    early = llm.generate([PROMPT], greedy(16, stop=[stop]))[0].outputs[0]
    assert early.finish_reason == "stop" and len(early.token_ids) < 8
    held = llm.generate([PROMPT], greedy(16, stop=[stop], min_tokens=8))[0].outputs[0]
    assert len(held.token_ids) >= 8
    assert held.text.startswith(full.text[: full.text.index(stop) + len(stop)])  # passed the early stop


def test_prompt_dicts_as_vllm_takes_them(llm):
    text, ids = "def add(a, b):", [11, 305, 2048]
    plain = [o.outputs[0].token_ids for o in llm.generate([text, ids], greedy(4), use_tqdm=False)]
    dicts = [{"prompt": text}, {"prompt_token_ids": ids}]
    assert [o.outputs[0].token_ids for o in llm.generate(dicts, greedy(4), use_tqdm=False)] == plain
    assert llm.generate({"prompt_token_ids": ids}, greedy(4))[0].outputs[0].token_ids == plain[1]


def test_the_extreme_seeds_run_and_differ(llm):
    # Sample i draws from (seed + i) mod 2**64: the largest seed's second sample wraps to seed 0.
    params = SamplingParams(temperature=1.0, max_tokens=8, ignore_eos=True, n=2)
    top = llm.generate([PROMPT], params.__class__(**{**vars(params), "seed": 2**64 - 1}), use_tqdm=False)[0]
    zero = llm.generate([PROMPT], params.__class__(**{**vars(params), "seed": 0, "n": 1}), use_tqdm=False)[0]
    assert top.outputs[1].token_ids == zero.outputs[0].token_ids
    low = llm.generate([PROMPT], params.__class__(**{**vars(params), "seed": -(2**63)}), use_tqdm=False)[0]
    assert all(len(c.token_ids) == 8 for c in low.outputs)


def test_stop_token_ids_and_min_tokens(llm):
    full = llm.generate([PROMPT], greedy(12))[0].outputs[0].token_ids
    stop_id = full[2]
    out = llm.generate([PROMPT], greedy(12, stop_token_ids=[stop_id]))[0].outputs[0]
    assert out.token_ids == full[: full.index(stop_id) + 1]
    assert (out.finish_reason, out.stop_reason) == ("stop", stop_id)
    first = full[0]
    held = llm.generate([PROMPT], greedy(12, stop_token_ids=[first], min_tokens=4))[0].outputs[0]
    assert first not in held.token_ids[:4] and len(held.token_ids) >= 4


def test_logprobs(llm):
    out = llm.generate([PROMPT], greedy(4, logprobs=3))[0].outputs[0]
    assert len(out.logprobs) == 4
    for token, position in zip(out.token_ids, out.logprobs):
        assert token in position and position[token].rank == 1  # greedy picks the most likely
        assert 3 <= len(position) <= 4
        best = max(p.logprob for p in position.values())
        assert position[token].logprob == pytest.approx(best)
    assert out.cumulative_logprob == pytest.approx(sum(p[t].logprob for t, p in zip(out.token_ids, out.logprobs)))


def test_prompt_logprobs_survive_chunking(llm, tiny_model_dir):
    prompt = list(range(200, 231))
    whole = llm.generate([prompt], greedy(1, prompt_logprobs=2))[0].prompt_logprobs
    chunked_llm = LLM(str(tiny_model_dir("llama")), dtype="float32", block_size=4, max_num_batched_tokens=5)
    chunked = chunked_llm.generate([prompt], greedy(1, prompt_logprobs=2))[0].prompt_logprobs
    assert whole[0] is None and len(whole) == len(prompt)
    for a, b, token in zip(whole[1:], chunked[1:], prompt[1:]):
        assert token in a
        assert a[token].logprob == pytest.approx(b[token].logprob, abs=1e-5)


def test_stream_matches_generate_and_early_exit_frees_blocks(llm):
    final = llm.generate([PROMPT], greedy(10))[0].outputs[0]
    texts = [o.outputs[0].text for o in llm.stream(PROMPT, greedy(10))]
    assert texts[-1] == final.text
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    kv = llm.engine.core.kv_cache
    stream = llm.stream(PROMPT, greedy(50))
    next(stream)
    stream.close()  # the caller walks away mid-generation
    assert kv.num_free_blocks == kv.num_blocks and not llm.engine.has_unfinished_requests()


def test_priority_scheduling_runs_urgent_first(tiny_model_dir):
    llm = LLM(str(tiny_model_dir("llama")), dtype="float32", scheduling_policy="priority", max_num_seqs=1)
    outs = llm.generate([PROMPT, PROMPT[:4]], greedy(3), priority=[5, 0], use_tqdm=False)
    assert outs[1].metrics.first_token_time < outs[0].metrics.first_token_time


def test_chat_uses_the_template(tiny_model_dir):
    llm = LLM(dtype="float32")  # the embedded demo
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    out = llm.chat(messages, greedy(4))[0]
    tokenizer = llm.get_tokenizer()
    rendered = tokenizer.decode(out.prompt_token_ids, skip_special_tokens=False)
    assert rendered.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert rendered.endswith("<|im_start|>assistant\n")
    assert len(out.outputs[0].token_ids) == 4


def test_float32_and_bfloat16_agree_on_greedy_start(tiny_model_dir):
    path = str(tiny_model_dir("llama"))
    a = LLM(path, dtype="float32").generate([PROMPT], greedy(3))[0].outputs[0].token_ids
    b = LLM(path, dtype="bfloat16").generate([PROMPT], greedy(3))[0].outputs[0].token_ids
    assert a[0] == b[0]
    assert torch.bfloat16 == LLM(path, dtype="bfloat16").engine.core.runner.dtype


def test_random_weight_preset_without_detokenizing():
    from forgellm.models.presets import PRESETS, preset_dir

    assert {"llama-3.1-8b", "llama-3.3-70b", "qwen3-8b", "tiny-llama"} <= set(PRESETS)
    llm = LLM(str(preset_dir("tiny-llama")), load_format="dummy")
    params = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True, detokenize=False, logprobs=1)
    out = llm.generate([[5, 6, 7]], params)[0].outputs[0]
    assert len(out.token_ids) == 5 and out.text == ""
    assert all(entry.decoded_token is None for position in out.logprobs for entry in position.values())
    again = LLM(str(preset_dir("tiny-llama")), load_format="dummy").generate([[5, 6, 7]], params)[0]
    assert again.outputs[0].token_ids == out.token_ids  # seeded random weights


def test_llama_8b_preset_config_reads_as_the_reference_shape():
    from forgellm.hf.config import load_model_config
    from forgellm.models.presets import preset_dir

    arch = load_model_config(preset_dir("llama-3.1-8b"))
    assert (arch.hidden_size, arch.num_hidden_layers, arch.num_key_value_heads, arch.vocab_size) == (
        4096,
        32,
        8,
        128256,
    )
    assert arch.rope.type == "llama3" and arch.rope.original_max_position_embeddings == 8192
