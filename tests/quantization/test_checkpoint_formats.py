"""Quantized checkpoints as the tools people use write them (tests/fixtures/quant, made by
tests/fixtures/make_quant_models.py with llmcompressor, ModelOpt and the documented AWQ/GPTQ/HF-fp8
layouts) load into forgellm and match transformers running the same checkpoint dequantized to float32
(tests/fixtures/quant_reference.py): weight-only schemes to float rounding, FP8 W8A8 with the
reference's activations quantized the same way by code in this test, greedy tokens identical."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from forgellm import LLM, SamplingParams
from forgellm.errors import ModelLoadError
from tests.quantization.test_online_quant import forgellm_logits

pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")
from tests.fixtures.quant_reference import reference_model  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "quant"
DEMO = Path(__file__).resolve().parents[2] / "forgellm" / "assets" / "demo"
FP8_MAX = 448.0

# fixture -> how the checkpoint's activations are quantized (None: 16-bit activations, weight-only)
FIXTURE_ACTIVATIONS = {
    "ct-w4a16": None,
    "ct-w4a16-asym-g64": None,
    "ct-w4a16-actorder": None,
    "ct-w8a16": None,
    "ct-qwen3-w4a16": None,
    "ct-nvfp4": None,  # W4A4 in the checkpoint; Hopper runs it W4A16
    "ct-nvfp4a16": None,
    "mo-nvfp4": None,
    "mo-w4a16-awq": None,
    "awq-gemm": None,
    "gptq-v1-desc-act": None,
    "gptq-v2": None,
    "gptq-8bit": None,
    "ct-fp8": "static",
    "mo-fp8": "static",
    "ct-fp8-dynamic": "token",
    "ct-fp8-block": "group",
    "hf-fp8-block": "group",
}
KV_FIXTURES = ("ct-fp8-kv", "mo-fp8-kv")
PROMPTS = [[5, 9, 200, 31, 7, 100], list(range(40, 77))]


def load(path: Path | str, **options) -> LLM:
    """A fixture (token ids only: no tokenizer of its own, so the demo's stands in). NVFP4 runs weight-only
    here, the exact form of the checkpoint's weights (the FP8 conversion is test_online_quant's)."""
    options.setdefault("nvfp4_mode", "weight_only")
    return LLM(str(path), tokenizer=str(DEMO), dtype="float32", block_size=4, **options)


def fp8_round_trip(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * scale


def quantize_activations(x: torch.Tensor, kind: str, input_scale: torch.Tensor | None) -> torch.Tensor:
    """What an FP8 W8A8 checkpoint does to a linear layer's input, written from the scheme's definition."""
    if kind == "static":
        return fp8_round_trip(x, input_scale)
    if kind == "token":
        return fp8_round_trip(x, (x.abs().amax(-1, keepdim=True) / FP8_MAX).clamp_min(1e-12))
    k = x.shape[-1]  # groups of 128 inputs, the last one short when 128 does not divide K
    groups = torch.nn.functional.pad(x, (0, -k % 128)).unflatten(-1, (-1, 128))
    scale = (groups.abs().amax(-1, keepdim=True) / FP8_MAX).clamp_min(1e-12)
    return fp8_round_trip(groups, scale).flatten(-2)[..., :k]


def reference_with_activations(path: Path, kind: str | None) -> torch.nn.Module:
    """The float reference, with each quantized linear's input quantized as the checkpoint says."""
    model = copy.deepcopy(reference_model(str(path))[0])
    if kind is None:
        return model
    from safetensors.torch import load_file

    tensors = load_file(str(path / "model.safetensors"))
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module_name != "lm_head":
            scale = tensors.get(f"{module_name}.input_scale")
            if kind == "static":
                # forgellm fuses q/k/v (and gate/up), which share one input: the largest of their scales.
                siblings = [
                    k for k in tensors if k.endswith(".input_scale") and k.startswith(module_name.rsplit(".", 1)[0])
                ]
                fused = {"q_proj", "k_proj", "v_proj"} if "self_attn" in module_name else {"gate_proj", "up_proj"}
                if module_name.rsplit(".", 1)[1] in fused:
                    scale = max(tensors[k].float().reshape(()) for k in siblings if k.split(".")[-2] in fused)
            module.register_forward_pre_hook(
                lambda _m, args, s=scale: (quantize_activations(args[0], kind, None if s is None else s.float()),)
            )
    return model


def effective_weight(layer) -> torch.Tensor:
    """The float32 [N, K] weight a forgellm linear multiplies by, from whatever its method packed."""
    from forgellm.kernels.fp8_quant import dequantize_fp8
    from forgellm.kernels.int_weight_gemm import dequantize_int_weight
    from forgellm.quantization.int_weight_only import IntWeightOnlyMethod
    from forgellm.quantization.nvfp4 import Nvfp4Method

    method = layer.method
    if isinstance(method, IntWeightOnlyMethod):
        w = dequantize_int_weight(
            layer.qweight, layer.scales, layer.zeros, method.bits, layer.group_size, "int", layer.perm
        )
        return w.float() * layer.pre_scale.float() if layer.pre_scale is not None else w.float()
    if isinstance(method, Nvfp4Method) and method.mode == "weight_only":
        return dequantize_int_weight(layer.qweight, layer.scales, None, 4, 16, "e2m1").float()
    return dequantize_fp8(layer.weight, layer.weight_scale, (128, 128)).float()


def reference_is_bf16(path: Path) -> bool:
    """transformers + compressed-tensors dequantizes into the checkpoint dtype before upcasting: bf16 ones round."""
    config = json.loads((path / "config.json").read_text())
    dtype = config.get("dtype", config.get("torch_dtype"))
    # Its NVFP4 decompression rounds through bf16 even in a float32 checkpoint.
    nvfp4 = config["quantization_config"].get("format") == "nvfp4-pack-quantized"
    return "transformers" in reference_model(str(path))[1] and (dtype != "float32" or nvfp4)


def assert_weights_match_reference(path: Path, llm: LLM) -> None:
    """Every part of every quantized linear equals the reference's dequantized weight."""
    reference = dict(reference_model(str(path))[0].named_parameters())
    checked = 0
    for layer in llm.engine.core.runner.model.modules():
        if getattr(layer, "part_names", None) is None or layer.method.describe() == "unquantized":
            continue
        weight = effective_weight(layer)
        for part, prefix in enumerate(layer.part_names):
            offset, size = layer.part_slice(part)
            ours, theirs = weight[offset : offset + size], reference[f"{prefix}.weight"].detach()
            if reference_is_bf16(path):  # its weights are ours rounded to bf16
                torch.testing.assert_close(ours.bfloat16().float(), theirs, atol=0, rtol=2**-8)
            else:
                torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
            checked += 1
    assert checked >= 8


def exact_weights(path: Path, kind: str | None, llm: LLM) -> torch.nn.Module:
    """The reference with activations quantized as the checkpoint says; where compressed-tensors rounded its
    weights to bf16, they are replaced by the float32 weights they round from (checked equal above)."""
    model = reference_with_activations(path, kind)
    if reference_is_bf16(path):
        params = dict(model.named_parameters())
        for layer in llm.engine.core.runner.model.modules():
            if getattr(layer, "part_names", None) is not None and layer.method.describe() != "unquantized":
                weight = effective_weight(layer)
                for part, prefix in enumerate(layer.part_names):
                    offset, size = layer.part_slice(part)
                    with torch.no_grad():
                        params[f"{prefix}.weight"].copy_(weight[offset : offset + size])
    return model


def assert_logits_match_reference(path: Path, kind: str | None, llm: LLM) -> None:
    """forgellm's float32 logits and greedy tokens against the reference with the same activation rounding."""
    model = exact_weights(path, kind, llm)
    logits = forgellm_logits(llm, PROMPTS)
    offset = 0
    for prompt in PROMPTS:
        with torch.no_grad():
            expected = model(torch.tensor([prompt])).logits[0].float()
        ours = logits[offset : offset + len(prompt)]
        if kind is None:
            torch.testing.assert_close(ours, expected, atol=1e-3, rtol=0)
        else:
            # An input a hair from an e4m3 rounding boundary (the norms before it differ in the last float bit)
            # may round the other way; this random model amplifies one such flip to ~0.2 in later logits.
            diff = (ours - expected).abs()
            assert diff.mean() < 1e-2 and diff.max() < 0.5, (diff.mean(), diff.max())
        offset += len(prompt)
    greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    ours = llm.generate([PROMPTS[0]], greedy, use_tqdm=False)[0].outputs[0].token_ids
    theirs = model.generate(torch.tensor([PROMPTS[0]]), max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert ours == theirs[0, len(PROMPTS[0]) :].tolist()


@pytest.mark.parametrize("name", list(FIXTURE_ACTIVATIONS))
def test_checkpoint_matches_dequantized_transformers(name):
    llm = load(FIXTURES / name, num_kv_blocks=64)
    assert llm.engine.model_info.quantization is not None
    assert_weights_match_reference(FIXTURES / name, llm)
    assert_logits_match_reference(FIXTURES / name, FIXTURE_ACTIVATIONS[name], llm)


@pytest.mark.parametrize("name", KV_FIXTURES)
def test_fp8_kv_cache_uses_the_checkpoint_scales(name):
    from safetensors.torch import load_file

    plain = load(FIXTURES / name, num_kv_blocks=64)
    assert plain.engine.model_info.kv_cache_dtype == "float32"  # "auto" is the model dtype, as in vLLM
    llm = load(FIXTURES / name, num_kv_blocks=64, kv_cache_dtype="fp8")
    assert llm.engine.model_info.kv_cache_dtype == "float8_e4m3fn"
    tensors = load_file(str(FIXTURES / name / "model.safetensors"))
    attn = llm.engine.core.runner.model.layers[1].self_attn.attn
    for which in ("k_scale", "v_scale"):
        key = next(k for k in tensors if k.startswith("model.layers.1.") and k.endswith(which))
        assert getattr(attn, which) == pytest.approx(float(tensors[key].float()), rel=1e-6)
    assert attn.k_cache.dtype == torch.float8_e4m3fn
    # K/V rounded to e4m3 move the logits only slightly (this random model amplifies rounding ~4x).
    ours, theirs = forgellm_logits(llm, PROMPTS), forgellm_logits(plain, PROMPTS)
    assert torch.nn.functional.cosine_similarity(ours, theirs, dim=-1).min() > 0.95


def copy_fixture(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    return dst


def edit_config(path: Path, edit) -> None:
    config = json.loads((path / "config.json").read_text())
    edit(config["quantization_config"])
    (path / "config.json").write_text(json.dumps(config))


def test_missing_scale_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    path = copy_fixture("ct-w4a16", tmp_path)
    tensors = load_file(str(path / "model.safetensors"))
    del tensors["model.layers.0.mlp.down_proj.weight_scale"]
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"model\.layers\.0\.mlp\.down_proj\.weight_scale"):
        load(path, num_kv_blocks=8)


@pytest.mark.parametrize(
    "name, edit, match",
    [
        (
            "ct-w4a16",
            lambda q: q.update(quant_method="bitsandbytes"),
            "quant_method 'bitsandbytes'.*supported: compressed",
        ),
        ("ct-w4a16", lambda q: q["config_groups"]["group_0"]["weights"].update(num_bits=3), "int 3-bit weights"),
        ("ct-w4a16", lambda q: q["config_groups"]["group_0"]["weights"].update(strategy="tensor"), "strategy 'tensor'"),
        ("gptq-v2", lambda q: q.update(bits=3), "gptq with 3-bit weights"),
        ("awq-gemm", lambda q: q.update(version="gemv"), "AWQ version 'gemv'"),
        ("hf-fp8-block", lambda q: q.update(activation_scheme="mixed"), "activation_scheme 'mixed'"),
    ],
)
def test_unsupported_checkpoint_is_a_typed_error(name, edit, match, tmp_path):
    path = copy_fixture(name, tmp_path)
    edit_config(path, edit)
    with pytest.raises(ModelLoadError, match=match):
        load(path, num_kv_blocks=8)


def test_modelopt_unknown_algo_lists_supported(tmp_path):
    path = copy_fixture("mo-fp8", tmp_path)
    hf_quant = json.loads((path / "hf_quant_config.json").read_text())
    hf_quant["quantization"]["quant_algo"] = "W4A8_AWQ"
    (path / "hf_quant_config.json").write_text(json.dumps(hf_quant))
    with pytest.raises(ModelLoadError, match=r"W4A8_AWQ.*supported: \('FP8', 'NVFP4', 'W4A16_AWQ'\)"):
        load(path, num_kv_blocks=8)


def test_quantizing_a_quantized_checkpoint_is_refused():
    from forgellm.errors import ConfigError

    with pytest.raises(ConfigError, match="already quantized"):
        load(FIXTURES / "ct-w4a16", quantization="int4")
