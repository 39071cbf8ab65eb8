"""`forgellm quantize`: every scheme's output loads in transformers (compressed-tensors decompression) and in
forgellm, with the same weights and float32 logits (activations rounded as the scheme says); round-to-nearest
outputs run exactly as the same scheme quantized at load; bad input fails before anything looks written."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from forgellm import LLM
from forgellm.cli.main import main
from tests.quantization.test_checkpoint_formats import (
    FIXTURES,
    assert_logits_match_reference,
    assert_weights_match_reference,
    load,
)
from tests.quantization.test_online_quant import forgellm_logits

pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")

PROMPTS = [[5, 9, 200, 31, 7], list(range(40, 73))]
CALIBRATION = ["--num-samples", "4", "--seq-len", "32", "--device", "cpu", "--no-report"]
# scheme -> (extra flags, how its activations are quantized, the same scheme at load or None)
CASES = {
    "w4a16-rtn": (["--group-size", "32"], None, dict(quantization="int4", quantization_group_size=32)),
    "w4a16-gptq": (["--group-size", "32"], None, None),
    "w4a16-awq": (["--group-size", "32"], None, None),
    "w8a16": ([], None, dict(quantization="int8")),
    "fp8": ([], "static", None),
    "fp8-dynamic": ([], "token", dict(quantization="fp8")),
    "fp8-block": ([], "group", None),  # on llama-128: forgellm fuses q/k/v only in whole 128-row blocks
    "nvfp4": ([], None, None),  # W4A4 in the checkpoint; forgellm (like transformers' dequantize) runs W4A16
    "nvfp4a16": ([], None, dict(quantization="nvfp4", nvfp4_mode="weight_only")),
}


def quantize(source: Path, out: Path, scheme: str, *flags: str) -> int:
    return main(["quantize", str(source), "-o", str(out), "--scheme", scheme, *CALIBRATION, *flags])


@pytest.mark.parametrize("scheme", list(CASES))
def test_quantized_checkpoint_loads_everywhere(scheme, tiny_model_dir, tmp_path):
    source = tiny_model_dir("llama-128" if scheme == "fp8-block" else "llama")
    out = tmp_path / scheme
    flags, activations, online = CASES[scheme]
    assert quantize(source, out, scheme, *flags) == 0
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["ignore"] == ["lm_head"]
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
    saved = load(out, num_kv_blocks=64)
    assert saved.engine.model_info.quantization.startswith("compressed-tensors")
    assert_weights_match_reference(out, saved)
    assert_logits_match_reference(out, activations, saved)
    if online is not None:  # the same scheme quantized at load gives the same logits
        at_load = LLM(str(source), dtype="float32", num_kv_blocks=64, block_size=4, **online)
        torch.testing.assert_close(
            forgellm_logits(saved, PROMPTS), forgellm_logits(at_load, PROMPTS), atol=1e-4, rtol=0
        )


def test_fp8_kv_cache_scales_are_calibrated(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "kv"
    assert quantize(tiny_model_dir("llama"), out, "fp8-dynamic", "--kv-cache-dtype", "fp8") == 0
    assert json.loads((out / "config.json").read_text())["quantization_config"]["kv_cache_scheme"]["num_bits"] == 8
    tensors = load_file(str(out / "model.safetensors"))
    llm = load(out, num_kv_blocks=64, kv_cache_dtype="fp8")
    for i, layer in enumerate(llm.engine.core.runner.model.layers):
        for which in ("k_scale", "v_scale"):
            stored = float(tensors[f"model.layers.{i}.self_attn.{which}"])
            assert stored > 0 and getattr(layer.self_attn.attn, which) == pytest.approx(stored)
    plain = load(out, num_kv_blocks=64)
    cosine = torch.nn.functional.cosine_similarity(forgellm_logits(llm, PROMPTS), forgellm_logits(plain, PROMPTS))
    assert cosine.min() > 0.99


def _tree_digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in path.rglob("*") if p.is_file()
    }


def test_bad_input_is_named_and_leaves_nothing(tiny_model_dir, tmp_path, capsys):
    source = tiny_model_dir("llama")
    before = _tree_digest(source)

    def fails(*args: str, match: str) -> None:
        assert main(["quantize", str(source), *args]) == 2
        assert match in capsys.readouterr().err

    out = str(tmp_path / "out")
    fails(
        "-o",
        out,
        "--scheme",
        "w4a16-rtn",
        "--group-size",
        "48",
        match="input size 128 is not divisible by the group size 48",
    )
    fails("-o", out, "--scheme", "w4a16-gptq", "--group-size", "48", *CALIBRATION, match="not divisible by the group")
    fails("-o", out, "--scheme", "fp8", "--calibration", str(tmp_path / "missing.txt"), *CALIBRATION, match="missing")
    (tmp_path / "empty.txt").write_text("")
    fails("-o", out, "--scheme", "fp8", "--calibration", str(tmp_path / "empty.txt"), *CALIBRATION, match="empty")
    fails("-o", out, "--scheme", "fp8", "--ignore", match="keep lm_head in --ignore")
    fails("-o", str(source), "--scheme", "fp8-dynamic", match="the input is never modified")
    fails("-o", out, "--scheme", "fp8-block", match="these are not: q_proj (64), k_proj (32); use fp8-dynamic")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))
    assert _tree_digest(source) == before

    empty = tmp_path / "not-a-checkpoint"
    empty.mkdir()
    assert main(["quantize", str(empty), "-o", out, "--scheme", "fp8-dynamic"]) == 2
    assert "has no config.json: pass a Hugging Face checkpoint directory" in capsys.readouterr().err
    quantized = FIXTURES / "ct-w4a16"
    assert main(["quantize", str(quantized), "-o", out, "--scheme", "fp8-dynamic"]) == 2
    assert "already quantized (compressed-tensors)" in capsys.readouterr().err
    other = tmp_path / "other-arch"
    shutil.copytree(source, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "architectures": ["FalconForCausalLM"]}))
    assert main(["quantize", str(other), "-o", out, "--scheme", "fp8-dynamic"]) == 2
    assert "'FalconForCausalLM' is not supported" in capsys.readouterr().err


def test_existing_output_needs_overwrite(tiny_model_dir, tmp_path, capsys):
    source, out = tiny_model_dir("llama"), tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert quantize(source, out, "fp8-dynamic") == 2
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert quantize(source, out, "fp8-dynamic", "--overwrite") == 0
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()


def test_failure_midway_leaves_no_output(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from forgellm.quantization.quantize import layer_quantizer

    def out_of_memory(self, index, layer, seen):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(layer_quantizer.LayerQuantizer, "__call__", out_of_memory)
    assert quantize(tiny_model_dir("llama"), tmp_path / "out", "fp8") == 2
    err = capsys.readouterr().err
    assert "out of memory calibrating model.layers.0" in err and "--num-samples" in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))
