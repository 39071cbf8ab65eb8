"""`forgellm quantize` (round-to-nearest schemes): the checkpoint it writes is read by transformers'
own compressed-tensors decompression as the same weights forgellm loads, and forgellm runs it exactly as
it runs the same scheme quantized at load."""

from __future__ import annotations

import json

import pytest
import torch

from forgellm import LLM
from forgellm.cli.main import main
from tests.quantization.test_checkpoint_formats import effective_weight
from tests.quantization.test_online_quant import forgellm_logits

transformers = pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")

PROMPTS = [[5, 9, 200, 31, 7], list(range(40, 73))]
CASES = {
    "w4a16-rtn": (["--group-size", "32"], dict(quantization="int4", quantization_group_size=32)),
    "w8a16": ([], dict(quantization="int8")),
    "fp8-dynamic": ([], dict(quantization="fp8")),
}


@pytest.mark.parametrize("scheme", list(CASES))
def test_quantized_checkpoint_loads_everywhere(scheme, tiny_model_dir, tmp_path):
    source = tiny_model_dir("llama")
    out = tmp_path / scheme
    flags, online = CASES[scheme]
    assert main(["quantize", str(source), "-o", str(out), "--scheme", scheme, *flags]) == 0
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "compressed-tensors"
    assert (out / "tokenizer.json").is_file()
    saved = LLM(str(out), dtype="float32", num_kv_blocks=64, block_size=4)
    assert saved.engine.model_info.quantization.startswith("compressed-tensors")
    # compressed-tensors' own decompression gives exactly forgellm's weights (the fixture is float32).
    config = transformers.CompressedTensorsConfig(dequantize=True)
    reference = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, quantization_config=config)
    params = dict(reference.named_parameters())
    for layer in saved.engine.core.runner.model.modules():
        if getattr(layer, "part_names", None) is not None and layer.method.describe() != "unquantized":
            weight = effective_weight(layer)
            for part, prefix in enumerate(layer.part_names):
                offset, size = layer.part_slice(part)
                torch.testing.assert_close(
                    weight[offset : offset + size], params[f"{prefix}.weight"], atol=1e-6, rtol=1e-5
                )
    # The same scheme quantized at load gives the same logits.
    at_load = LLM(str(source), dtype="float32", num_kv_blocks=64, block_size=4, **online)
    torch.testing.assert_close(forgellm_logits(saved, PROMPTS), forgellm_logits(at_load, PROMPTS), atol=1e-4, rtol=0)


def test_bad_schemes_and_inputs(tiny_model_dir, tmp_path, capsys):
    source = str(tiny_model_dir("llama"))
    assert main(["quantize", source, "-o", str(tmp_path / "a"), "--scheme", "w4a16-gptq"]) == 2
    assert "not implemented yet" in capsys.readouterr().err
    assert main(["quantize", source, "-o", str(tmp_path / "b"), "--scheme", "w4a16-rtn", "--group-size", "48"]) == 2
    assert "not divisible by the group size 48" in capsys.readouterr().err
    main(["quantize", source, "-o", str(tmp_path / "c"), "--scheme", "w8a16"])
    assert main(["quantize", str(tmp_path / "c"), "-o", str(tmp_path / "d"), "--scheme", "w8a16"]) == 2
    assert "already quantized" in capsys.readouterr().err
