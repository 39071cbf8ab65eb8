"""Bad input gets a typed error that says what to change, and the engine keeps serving."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from forgellm import (
    LLM,
    CapacityError,
    ConfigError,
    ContextLengthError,
    InvalidRequestError,
    ModelLoadError,
    SamplingParams,
)
from tests.fixtures.make_tiny_models import demo_vocab_size

VOCAB = demo_vocab_size()  # the tiny fixture models share the demo tokenizer's vocabulary

GREEDY = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_model_dir) -> LLM:
    return LLM(str(tiny_model_dir("llama")), dtype="float32", max_model_len=64, num_kv_blocks=40, block_size=4)


def still_serves(llm: LLM) -> None:
    out = llm.generate([[1, 2, 3]], GREEDY, use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 4
    kv = llm.engine.core.kv_cache
    assert kv.num_free_blocks == kv.num_blocks and not llm.engine.has_unfinished_requests()


def test_prompt_longer_than_context_names_both_numbers(llm):
    with pytest.raises(ContextLengthError, match=r"70 tokens.*max_model_len is 64"):
        llm.generate([list(range(1, 71))], GREEDY)
    still_serves(llm)


def test_max_tokens_that_cannot_fit(llm):
    with pytest.raises(ContextLengthError, match=r"at most 54") as err:
        llm.generate([list(range(1, 11))], SamplingParams(max_tokens=60))
    assert err.value.param == "max_tokens"
    still_serves(llm)


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"top_k": -3}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"min_tokens": 9, "max_tokens": 4}, "min_tokens"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"presence_penalty": 3.0}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"logprobs": -1}, "logprobs"),
        ({"stop": [""]}, "stop"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"temperature": float("inf")}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": float("nan")}, "top_p"),
        ({"presence_penalty": float("-inf")}, "presence_penalty"),
        ({"repetition_penalty": float("inf")}, "repetition_penalty"),
        ({"seed": 2**64}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"n": True}, "n"),
        ({"max_tokens": 2.0}, "max_tokens"),
    ],
)
def test_invalid_sampling_values(kwargs, param):
    with pytest.raises(InvalidRequestError, match=param) as err:
        SamplingParams(**kwargs)
    assert err.value.param == param


def test_logprobs_beyond_the_engine_limit(llm):
    with pytest.raises(InvalidRequestError, match=r"at most 20 \(max_logprobs\)"):
        llm.generate([[1, 2]], SamplingParams(logprobs=21))
    still_serves(llm)


@pytest.mark.parametrize("prompt", ["", []])
def test_empty_prompt(llm, prompt):
    with pytest.raises(InvalidRequestError, match="empty"):
        llm.generate([prompt] if prompt == [] else prompt, GREEDY)
    still_serves(llm)


@pytest.mark.parametrize("bad", [-1, VOCAB, 10**9])
def test_token_ids_outside_the_vocabulary(llm, bad):
    with pytest.raises(InvalidRequestError, match=rf"token id {bad} is outside the vocabulary \[0, {VOCAB}\)"):
        llm.generate([[1, bad, 2]], GREEDY)
    still_serves(llm)


def test_one_bad_prompt_queues_nothing(llm):
    with pytest.raises(InvalidRequestError):
        llm.generate([[1, 2, 3], [], [4, 5]], GREEDY)
    assert not llm.engine.has_unfinished_requests()
    still_serves(llm)


def test_bad_request_while_another_streams(llm):
    stream = llm.stream([5, 6, 7], SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))
    first = next(stream)
    with pytest.raises(InvalidRequestError):
        llm.engine.add_request("bad", [99999], GREEDY)
    rest = list(stream)
    assert len(rest[-1].outputs[0].token_ids) == 6 and len(first.outputs[0].token_ids) == 1
    still_serves(llm)


def test_request_larger_than_the_whole_kv_cache(tiny_model_dir):
    small = LLM(str(tiny_model_dir("llama")), dtype="float32", num_kv_blocks=4, block_size=4)
    with pytest.raises(CapacityError, match="holds 16"):
        small.generate([[1] * 10], SamplingParams(max_tokens=10))
    still_serves(small)


def copy_model(tiny_model_dir, tmp_path, variant="llama"):
    dst = tmp_path / variant
    shutil.copytree(tiny_model_dir(variant), dst)
    return dst


def test_unsupported_architecture_lists_supported(tiny_model_dir, tmp_path):
    path = copy_model(tiny_model_dir, tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"GPT2LMHeadModel.*LlamaForCausalLM.*Qwen3ForCausalLM"):
        LLM(str(path))


def test_missing_and_unexpected_tensors_are_named(tiny_model_dir, tmp_path):
    path = copy_model(tiny_model_dir, tmp_path)
    tensors = load_file(path / "model.safetensors")
    missing = tensors.pop("model.layers.1.mlp.up_proj.weight")
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"lacks tensors.*model\.layers\.1\.mlp\.up_proj\.weight"):
        LLM(str(path))
    tensors["model.layers.1.mlp.up_proj.weight"] = missing
    tensors["model.layers.9.extra.weight"] = missing.clone()
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"does not use.*model\.layers\.9\.extra\.weight"):
        LLM(str(path))


def test_wrong_tensor_shape_is_named(tiny_model_dir, tmp_path):
    path = copy_model(tiny_model_dir, tmp_path)
    tensors = load_file(path / "model.safetensors")
    tensors["model.norm.weight"] = tensors["model.norm.weight"][:10].clone()
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"model\.norm\.weight.*\(10,\).*\(64,\)"):
        LLM(str(path))


def test_truncated_and_missing_shards(tiny_model_dir, tmp_path):
    path = copy_model(tiny_model_dir, tmp_path)
    shard = path / "model.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        LLM(str(path))
    shard.unlink()
    with pytest.raises(ModelLoadError, match="safetensors"):
        LLM(str(path))


def test_missing_model_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        LLM(str(tmp_path / "nope"))


def test_invalid_engine_options():
    with pytest.raises(ConfigError, match="max_num_seqs"):
        LLM(max_num_seqs=0)
    with pytest.raises(ConfigError, match="dtype"):
        LLM(dtype="float8")
    with pytest.raises(ConfigError, match="max_model_len 5000 exceeds the model's context of 2048"):
        LLM(max_model_len=5000)


def test_prompt_over_the_step_budget_without_chunked_prefill(tiny_model_dir):
    llm = LLM(str(tiny_model_dir("llama")), dtype="float32", enable_chunked_prefill=False, max_num_batched_tokens=8)
    with pytest.raises(ContextLengthError, match="chunked prefill is off"):
        llm.generate([list(range(1, 12))], GREEDY)
    still_serves(llm)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_requested_without_a_gpu():
    with pytest.raises(ConfigError, match="no CUDA GPU is available"):
        LLM(device="cuda")


def test_config_and_keyword_options_together():
    from forgellm import EngineConfig

    with pytest.raises(InvalidRequestError, match="either config"):
        LLM(config=EngineConfig(), dtype="float32")


@pytest.mark.parametrize(
    "prompt",
    [{"prompt": "x", "prompt_token_ids": [1]}, {"prompt_token_ids": "x"}, {"prompt": ["not", "text"]}, 3.5],
)
def test_malformed_prompt_dicts(llm, prompt):
    with pytest.raises(InvalidRequestError, match="prompt") as err:
        llm.generate(prompt, GREEDY)
    assert err.value.param == "prompt"
    still_serves(llm)


@pytest.mark.parametrize("text", ["\ud800", "ok \udfff then"])
def test_a_lone_surrogate_is_an_invalid_prompt_not_a_crash(llm, text):
    # Valid in JSON ("\ud800") and in Python strings, not in Unicode: the tokenizer raised a TypeError.
    with pytest.raises(InvalidRequestError, match="unpaired surrogate") as err:
        llm.generate(text, GREEDY)
    assert err.value.param == "prompt"
    with pytest.raises(InvalidRequestError, match="unpaired surrogate"):
        llm.chat([{"role": "user", "content": text}], GREEDY)
    still_serves(llm)


def test_request_id_already_in_use(llm):
    llm.engine.add_request("dup", [1, 2, 3], GREEDY)
    with pytest.raises(InvalidRequestError, match="already in use"):
        llm.engine.add_request("dup", [4, 5], GREEDY)
    llm.engine.abort_request("dup")
    still_serves(llm)


def test_unknown_preset_and_load_format():
    from forgellm.models.presets import preset_dir

    with pytest.raises(ConfigError, match="unknown model-config preset 'llama-9b'.*llama-3.1-8b"):
        preset_dir("llama-9b")
    with pytest.raises(ConfigError, match="load_format must be auto or dummy"):
        LLM(load_format="pickle")
