"""The LinearMethod seam: a method names its own checkpoint tensors, receives them through the weight
map, repacks them after loading, and a QuantizationConfig picks it per layer (honouring `ignore`)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from forgellm.errors import ModelLoadError
from forgellm.hf.config import load_model_config
from forgellm.layers.linear_method import CheckpointTensors, LinearMethod, UnquantizedLinearMethod
from forgellm.quantization.config import QuantizationConfig, is_ignored
from forgellm.worker.forward_batch import SequenceChunk, build_forward_batch
from forgellm.worker.model_runner import load_model


class RowScaledMethod(LinearMethod):
    """A toy scheme: the checkpoint stores `weight_q` = W / s and `weight_s` = s per output row."""

    def create_weights(self, layer, dtype):
        layer.loaded_parts = {}

    def checkpoint_tensors(self):
        return CheckpointTensors(required=("weight_q", "weight_s"), optional=("input_hint",))

    def load(self, layer, name, loaded, part, ckpt_name):
        layer.loaded_parts[(name, part)] = loaded

    def finish_loading(self, layer):
        parts = [
            layer.loaded_parts[("weight_q", p)] * layer.loaded_parts[("weight_s", p)]
            for p in range(len(layer.part_names))
        ]
        layer.dense = torch.cat(parts).float()
        del layer.loaded_parts

    def apply(self, layer, x, bias):
        return torch.nn.functional.linear(x, layer.dense.to(x.dtype), bias)


class ToyConfig(QuantizationConfig):
    name = "toy"

    def quantized_method(self, layer):
        return RowScaledMethod()


def write_toy_checkpoint(src, dst, skip=()):
    """Rewrite every projection except the LM head in the toy format."""
    tensors = load_file(str(src / "model.safetensors"))
    out = {}
    for name, tensor in tensors.items():
        if name.endswith("_proj.weight") and name not in skip:
            scale = tensor.abs().amax(dim=1, keepdim=True) + 1e-3
            out[name.replace(".weight", ".weight_q")] = (tensor / scale).contiguous()
            out[name.replace(".weight", ".weight_s")] = scale
        elif name not in skip:
            out[name] = tensor
    dst.mkdir()
    save_file(out, str(dst / "model.safetensors"))
    (dst / "config.json").write_text((src / "config.json").read_text())


def logits_of(model, prompt):
    chunk = SequenceChunk(prompt, 0, list(range(-(-len(prompt) // 4))), list(range(len(prompt))))
    batch = build_forward_batch([chunk], 4, torch.device("cpu"))
    from forgellm.worker.model_runner import ModelRunner

    ModelRunner(model, 4, 0).allocate_kv_cache(8)
    with torch.inference_mode():
        return model.compute_logits(model(batch.input_ids, batch.positions, batch))


def test_method_with_its_own_tensor_names_loads_and_repacks(tiny_model_dir, tmp_path):
    src = tiny_model_dir("llama")
    dst = tmp_path / "toy"
    write_toy_checkpoint(src, dst)
    arch = load_model_config(dst)
    toy = load_model(dst, arch, torch.float32, torch.device("cpu"), quant_config=ToyConfig(ignore=["lm_head"]))
    plain = load_model(src, arch, torch.float32, torch.device("cpu"))
    layer = toy.layers[0].self_attn.qkv_proj
    assert isinstance(layer.method, RowScaledMethod) and not hasattr(layer, "loaded_parts")
    assert isinstance(toy.lm_head.method, UnquantizedLinearMethod)  # ignored: stays dense
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    torch.testing.assert_close(logits_of(toy, prompt), logits_of(plain, prompt), atol=1e-4, rtol=1e-4)


def test_missing_method_tensor_is_named(tiny_model_dir, tmp_path):
    src = tiny_model_dir("llama")
    dst = tmp_path / "toy"
    write_toy_checkpoint(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight_s"]
    save_file(tensors, str(dst / "model.safetensors"))
    arch = load_model_config(dst)
    with pytest.raises(ModelLoadError, match=r"model\.layers\.1\.mlp\.up_proj\.weight_s"):
        load_model(dst, arch, torch.float32, torch.device("cpu"), quant_config=ToyConfig(ignore=["lm_head"]))


def test_partly_ignored_fused_layer_is_refused(tiny_model_dir):
    arch = load_model_config(tiny_model_dir("llama"))
    config = ToyConfig(ignore=["lm_head", "re:.*\\.k_proj"])
    with pytest.raises(ModelLoadError, match="some but not all"):
        load_model(tiny_model_dir("llama"), arch, torch.float32, torch.device("cpu"), quant_config=config)


@pytest.mark.parametrize(
    "name, patterns, expected",
    [
        ("lm_head", ["lm_head"], True),
        ("model.layers.0.mlp.down_proj", ["re:.*down_proj"], True),
        ("model.layers.0.mlp.down_proj", ["re:.*up_proj"], False),
        ("model.layers.0.mlp.down_proj", ["*down_proj*"], True),
        ("model.layers.10.self_attn.q_proj", ["model.layers.1.*"], False),
        ("model.layers.0.self_attn.q_proj", [], False),
    ],
)
def test_ignore_patterns(name, patterns, expected):
    assert is_ignored(name, patterns) is expected


@pytest.mark.parametrize("value, match", [(torch.ones(2), "must be a scalar"), (torch.tensor(0.0), "positive finite")])
def test_bad_kv_cache_scale_is_named(value, match):
    from forgellm.layers.attention import Attention

    attn = Attention(4, 2, 16, 0.25)
    with pytest.raises(ModelLoadError, match=rf"model\.layers\.0\.self_attn\.k_scale.*{match}"):
        attn.load("k_scale", value, None, "model.layers.0.self_attn.k_scale")
    attn.load("k_scale", torch.tensor(0.5), None, "model.layers.0.self_attn.k_scale")
    assert attn.k_scale == 0.5


def test_fused_parts_with_different_act_order_are_refused():
    """q/k/v share one input, so GPTQ gives them one g_idx; a checkpoint where they differ cannot be fused."""
    from forgellm.quantization.staged import same_across_parts

    g = torch.arange(8) // 4
    assert torch.equal(same_across_parts([g, g.clone()], "g_idx", ["a.q_proj", "a.k_proj"]), g)
    with pytest.raises(ModelLoadError, match=r"a\.k_proj: its g_idx differs from a\.q_proj's"):
        same_across_parts([g, g.flip(0)], "g_idx", ["a.q_proj", "a.k_proj"])
    with pytest.raises(ModelLoadError, match="pre_quant_scale differs"):
        same_across_parts([None, torch.ones(8)], "pre_quant_scale", ["a.q_proj", "a.k_proj"])
