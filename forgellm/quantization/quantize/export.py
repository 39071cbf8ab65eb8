"""`forgellm quantize`: an unquantized checkpoint in, a compressed-tensors checkpoint out (the format
llmcompressor writes and vLLM, SGLang, transformers with compressed-tensors, and forgellm load).

Weight-only round-to-nearest schemes and dynamic FP8 go tensor by tensor, shard by shard (peak memory one
shard). Calibrated schemes (GPTQ, AWQ, static FP8 and NVFP4 activation scales, FP8 KV-cache scales) load
the model once and calibrate it layer by layer (calibrate.py). Output is written to a hidden sibling
directory and renamed into place at the end, so a failed run leaves nothing that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from forgellm.engine.llm_engine import resolve_device
from forgellm.errors import ConfigError, ModelLoadError
from forgellm.hf.checkpoint import iter_checkpoint_tensors
from forgellm.hf.config import load_model_config, resolve_dtype
from forgellm.hf.config_types import ModelArchConfig
from forgellm.hf.tokenizer import Tokenizer
from forgellm.models.registry import get_model_class
from forgellm.quantization.config import is_ignored
from forgellm.quantization.quantize.calibrate import Progress, calibrate_layers
from forgellm.quantization.quantize.calibration_data import calibration_samples, load_calibration_texts
from forgellm.quantization.quantize.layer_quantizer import LayerQuantizer
from forgellm.quantization.quantize.schemes import FP8_BLOCK, Scheme, get_scheme, quantization_config
from forgellm.quantization.quantize.shard_writer import ShardWriter
from forgellm.quantization.quantize.weights import quantize_rtn
from forgellm.worker.model_runner import load_model

COPIED_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "generation_config.json", "tokenizer.model", "vocab.json", "merges.txt",
)  # fmt: skip
_LINEAR_SUFFIXES = ("_proj.weight", "lm_head.weight")


@dataclass
class QuantizeOptions:
    """Everything `forgellm quantize` takes besides the two directories and the scheme."""

    group_size: int | None = None  # int schemes: inputs per scale; None: the scheme's default; -1: per channel
    ignore: list[str] = field(default_factory=lambda: ["lm_head"])
    calibration: str | None = None  # a text file or directory; None: the sample shipped with forgellm
    num_samples: int = 128
    seq_len: int = 512
    device: str = "auto"
    kv_cache_dtype: str = "auto"  # "fp8": calibrate per-layer K and V scales
    act_order: bool = True  # GPTQ: quantize columns by decreasing Hessian diagonal (groups stay in order)
    overwrite: bool = False
    progress: bool = True


def _group_size(scheme: Scheme, requested: int | None) -> int | None:
    if not scheme.weights.startswith("int"):
        return None
    if requested is None:
        return scheme.default_group_size
    return None if requested == -1 else requested


def check_source(model_dir: Path) -> tuple[dict, ModelArchConfig]:
    """config.json (raw and parsed) of an unquantized checkpoint of a supported architecture, else a typed error."""
    if not (model_dir / "config.json").is_file():
        raise ModelLoadError(f"{model_dir} has no config.json: pass a Hugging Face checkpoint directory")
    config = json.loads((model_dir / "config.json").read_text())
    existing = config.get("quantization_config")
    if existing is not None or (model_dir / "hf_quant_config.json").is_file():
        method = (existing or {}).get("quant_method", "modelopt")
        raise ConfigError(f"{model_dir} is already quantized ({method}); quantize an unquantized checkpoint")
    arch = load_model_config(model_dir)
    get_model_class(arch.architecture)
    return config, arch


def check_fp8_blocks(arch: ModelArchConfig) -> None:
    """forgellm (like vLLM) fuses q/k/v and gate/up only when each part is whole 128-row weight blocks."""
    parts = {
        "q_proj": arch.num_attention_heads * arch.head_dim,
        "k_proj": arch.num_key_value_heads * arch.head_dim,
        "gate_proj": arch.intermediate_size,
    }
    bad = {name: size for name, size in parts.items() if size % FP8_BLOCK[0]}
    if bad:
        raise ConfigError(
            f"--scheme fp8-block needs fused layers' outputs in whole {FP8_BLOCK[0]}-row blocks; these are not: "
            f"{', '.join(f'{n} ({s})' for n, s in bad.items())}; use fp8-dynamic"
        )


def _prepare_output(model_dir: Path, out: Path, overwrite: bool) -> Path:
    """A fresh hidden directory beside `out`, after refusing to clobber anything not asked for."""
    if out.resolve() == model_dir.resolve():
        raise ConfigError("the output directory is the input directory; the input is never modified")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty; pass --overwrite to replace it or choose another -o")
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def quantize_checkpoint(model_dir: str | Path, out_dir: str | Path, scheme_name: str, options: QuantizeOptions) -> Path:
    """Write `model_dir` quantized with the scheme to `out_dir` and return it."""
    scheme, model_dir, out = get_scheme(scheme_name), Path(model_dir), Path(out_dir)
    config, arch = check_source(model_dir)
    if options.kv_cache_dtype not in ("auto", "fp8"):
        raise ConfigError(f"kv_cache_dtype must be auto or fp8, got {options.kv_cache_dtype!r}")
    kv_fp8 = options.kv_cache_dtype == "fp8"
    if scheme.weight_strategy == "block":
        check_fp8_blocks(arch)
    group_size = _group_size(scheme, options.group_size)
    if scheme.activations in ("static", "nvfp4") and not is_ignored("lm_head", options.ignore):
        raise ConfigError(f"--scheme {scheme.name} calibrates decoder layers only; keep lm_head in --ignore")
    staging = _prepare_output(model_dir, out, options.overwrite)
    try:
        calibrated = scheme.calibrated or kv_fp8
        quantizer = _calibrate(model_dir, arch, scheme, group_size, kv_fp8, options) if calibrated else None
        _write(model_dir, staging, scheme, group_size, options, quantizer)
        for file in COPIED_FILES:
            if (model_dir / file).is_file():
                shutil.copy2(model_dir / file, staging / file)
        act_order = scheme.algorithm == "gptq" and options.act_order
        config["quantization_config"] = quantization_config(scheme, group_size, options.ignore, act_order, kv_fp8)
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    staging.rename(out)
    return out


def _calibrate(
    model_dir: Path,
    arch: ModelArchConfig,
    scheme: Scheme,
    group_size: int | None,
    kv_fp8: bool,
    options: QuantizeOptions,
) -> LayerQuantizer:
    """Load the float model and calibrate it layer by layer; the quantizer holds what it made (on the CPU)."""
    tokenizer = Tokenizer.from_dir(model_dir)
    texts = load_calibration_texts(options.calibration)
    samples = calibration_samples(tokenizer, texts, options.num_samples, options.seq_len)
    model = load_model(model_dir, arch, resolve_dtype("auto", arch), resolve_device(options.device))
    quantizer = LayerQuantizer(model, scheme, group_size, options.ignore, kv_fp8, options.act_order)
    progress = Progress(len(model.layers), f"quantize {scheme.name}") if options.progress else None
    calibrate_layers(model, samples, quantizer.needs, quantizer, progress=progress)
    return quantizer


def _is_quantized_linear(name: str, tensor: torch.Tensor, ignore: list[str]) -> bool:
    return (
        name.endswith(_LINEAR_SUFFIXES) and tensor.dim() == 2 and not is_ignored(name.removesuffix(".weight"), ignore)
    )


def _write(
    model_dir: Path,
    out: Path,
    scheme: Scheme,
    group_size: int | None,
    options: QuantizeOptions,
    quantizer: LayerQuantizer | None,
) -> None:
    """Every input tensor to the shards: calibrated parts as made, other linears round to nearest here."""
    made = dict(quantizer.tensors) if quantizer is not None else {}
    replaced = quantizer.replaced if quantizer is not None else set()
    device = resolve_device(options.device)
    writer = ShardWriter(out)
    for name, tensor in iter_checkpoint_tensors(model_dir):
        if name in replaced:
            continue
        if name in made:  # a float tensor calibration changed (AWQ folds scales into norms)
            writer.add(name, made.pop(name))
        elif _is_quantized_linear(name, tensor, options.ignore):
            base = name.removesuffix(".weight")
            quantized = quantize_rtn(base, tensor.to(device), scheme, group_size, tensor.dtype)
            for suffix, part in quantized.tensors.items():
                writer.add(f"{base}.{suffix}", part.cpu())
        else:
            writer.add(name, tensor)
    for name, tensor in made.items():
        writer.add(name, tensor)
    writer.close()
