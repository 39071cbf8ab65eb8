"""Quantization at load (round to nearest) against transformers running the same model with weights
(and, for fp8, activations) quantized and dequantized by independent pure-torch code."""

from __future__ import annotations

import pytest
import torch

from forgellm import LLM, SamplingParams
from forgellm.errors import ConfigError
from forgellm.worker.forward_batch import SequenceChunk, build_forward_batch
from tests.quantization import reference_quant as ref

transformers = pytest.importorskip("transformers")

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def hf_quantized(path, weight_fn, act_fn=None):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in PROJECTIONS:
            with torch.no_grad():
                module.weight.copy_(weight_fn(module.weight.float()))
            if act_fn is not None:
                module.register_forward_pre_hook(lambda _m, args: (act_fn(args[0]),))
    return model


def forgellm_logits(llm, prompts):
    """Float32 logits of every prompt position, the prompts prefilled together in one ForwardBatch (on the CPU)."""
    runner = llm.engine.core.runner
    size = runner.block_size
    chunks, block = [], 0
    for prompt in prompts:
        blocks = list(range(block, block + -(-len(prompt) // size)))
        block += len(blocks)
        chunks.append(SequenceChunk(prompt, 0, blocks, list(range(len(prompt)))))
    batch = build_forward_batch(chunks, size, runner.device)
    with torch.inference_mode():
        return runner.model.compute_logits(runner.model(batch.input_ids, batch.positions, batch)).cpu()


CASES = {
    "int8": (dict(quantization="int8"), lambda w: ref.rtn_int(w, 8, None), None, 1e-4),
    "int4-g32": (dict(quantization="int4", quantization_group_size=32), lambda w: ref.rtn_int(w, 4, 32), None, 1e-4),
    "int4-g64": (dict(quantization="int4", quantization_group_size=64), lambda w: ref.rtn_int(w, 4, 64), None, 1e-4),
    "int4-channel": (
        dict(quantization="int4", quantization_group_size=-1),
        lambda w: ref.rtn_int(w, 4, None),
        None,
        1e-4,
    ),
    "fp8": (dict(quantization="fp8"), ref.fp8_channel, ref.fp8_token, 2e-3),
    "nvfp4": (dict(quantization="nvfp4", nvfp4_mode="weight_only"), ref.nvfp4, None, 1e-4),
    # the default on GPUs without FP4 tensor cores: NVFP4 dequantized, then FP8 per channel, FP8 activations
    "nvfp4-as-fp8": (dict(quantization="nvfp4"), lambda w: ref.fp8_channel(ref.nvfp4(w)), ref.fp8_token, 2e-3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_quantized_at_load_matches_dequantized_transformers(case, tiny_model_dir):
    options, weight_fn, act_fn, atol = CASES[case]
    path = tiny_model_dir("llama")
    llm = LLM(str(path), dtype="float32", num_kv_blocks=64, block_size=4, **options)
    prompts = [[5, 9, 200, 31, 7], list(range(40, 73))]
    logits = forgellm_logits(llm, prompts)
    model = hf_quantized(path, weight_fn, act_fn)
    offset = 0
    for prompt in prompts:
        with torch.no_grad():
            expected = model(torch.tensor([prompt])).logits[0]
        torch.testing.assert_close(logits[offset : offset + len(prompt)], expected, atol=atol, rtol=0)
        offset += len(prompt)
    greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    ours = llm.generate([prompts[0]], greedy, use_tqdm=False)[0].outputs[0].token_ids
    theirs = model.generate(torch.tensor([prompts[0]]), max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert ours == theirs[0, len(prompts[0]) :].tolist()


def test_lm_head_stays_unquantized(tiny_model_dir):
    llm = LLM(str(tiny_model_dir("llama")), dtype="float32", quantization="int4", quantization_group_size=32)
    model = llm.engine.core.runner.model
    assert model.lm_head.method.describe() == "unquantized"
    assert "int4" in model.layers[0].mlp.down_proj.method.describe()
    assert "int4 weight-only (group 32" in llm.engine.model_info.quantization


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(quantization="int3"), "quantization must be one of"),
        (dict(quantization="int4", quantization_group_size=48), "quantization_group_size"),
        (dict(kv_cache_dtype="int8"), "kv_cache_dtype"),
        (dict(nvfp4_mode="fp4"), "nvfp4_mode"),
    ],
)
def test_bad_options_are_config_errors(options, match, tiny_model_dir):
    with pytest.raises(ConfigError, match=match):
        LLM(str(tiny_model_dir("llama")), dtype="float32", **options)


def test_group_that_does_not_divide_the_inputs_is_named(tiny_model_dir):
    from forgellm.errors import ModelLoadError

    # The tiny llama's hidden size is 64: groups of 128 do not fit.
    with pytest.raises(ModelLoadError, match=r"q_proj: input size 64 is not divisible by the group size 128"):
        LLM(str(tiny_model_dir("llama")), dtype="float32", quantization="int4")


def test_fp8_on_a_gpu_without_fp8_names_the_capability(monkeypatch):
    from forgellm.errors import ModelLoadError
    from forgellm.quantization.fp8 import check_fp8_support

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))  # an A100
    with pytest.raises(ModelLoadError, match=r"compute capability 8\.9 or newer.*this one is 8\.0"):
        check_fp8_support(torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    check_fp8_support(torch.device("cuda"))  # an H100/H200: fine


def test_fp8_kv_cache_holds_twice_the_blocks_in_the_same_budget(tiny_model_dir):
    """The budget (not max_num_seqs x max_model_len) binds at 1 MB: e4m3 K/V fit twice the blocks of bf16."""
    path = str(tiny_model_dir("llama"))
    blocks = {
        kv: LLM(path, dtype="bfloat16", kv_cache_dtype=kv, cpu_kv_cache_gb=0.001, max_num_seqs=64).engine.core.runner
        for kv in ("auto", "fp8")
    }
    assert blocks["fp8"].kv_cache_dtype == torch.float8_e4m3fn
    assert 2 * blocks["auto"].num_blocks <= blocks["fp8"].num_blocks <= 2 * blocks["auto"].num_blocks + 1
