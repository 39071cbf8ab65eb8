"""Round-to-nearest quantization of a checkpoint into the compressed-tensors format, the one llmcompressor
writes and vLLM, SGLang, transformers (with compressed-tensors) and forgellm load.

Tensor by tensor, shard by shard: peak memory is one shard plus one weight in float32. Calibrated schemes
(GPTQ, AWQ, static FP8 scales, NVFP4) are issue 12's remaining work.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from forgellm.errors import ConfigError, ModelLoadError
from forgellm.hf.checkpoint import iter_checkpoint_tensors
from forgellm.kernels.fp8_quant import FP8_DTYPE, FP8_MAX
from forgellm.kernels.int_weight_gemm import pack_int_weight
from forgellm.quantization.config import is_ignored
from forgellm.quantization.online import rtn_int

RTN_SCHEMES = ("w4a16-rtn", "w8a16", "fp8-dynamic")
PLANNED_SCHEMES = ("fp8", "fp8-block", "w4a16-gptq", "w4a16-awq", "nvfp4", "nvfp4a16")
COPIED_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "generation_config.json", "tokenizer.model", "vocab.json", "merges.txt",
)  # fmt: skip
SHARD_BYTES = 4 * 2**30
_LINEAR_SUFFIXES = ("_proj.weight", "lm_head.weight")


def _weights_args(scheme: str, group_size: int | None) -> dict[str, Any]:
    """compressed-tensors QuantizationArgs of the weights, spelled as llmcompressor writes them."""
    args: dict[str, Any] = {"actorder": None, "block_structure": None, "dynamic": False, "observer": "minmax"}
    args.update(observer_kwargs={}, scale_dtype=None, symmetric=True, zp_dtype=None)
    if scheme == "fp8-dynamic":
        return {**args, "group_size": None, "num_bits": 8, "strategy": "channel", "type": "float"}
    bits = 4 if scheme == "w4a16-rtn" else 8
    strategy = "group" if group_size else "channel"
    return {**args, "group_size": group_size, "num_bits": bits, "strategy": strategy, "type": "int"}


def quantization_config(scheme: str, group_size: int | None, ignore: list[str]) -> dict[str, Any]:
    """config.json's `quantization_config` for `scheme`."""
    fmt = "float-quantized" if scheme == "fp8-dynamic" else "pack-quantized"
    acts = None
    if scheme == "fp8-dynamic":
        acts = {**_weights_args(scheme, None), "dynamic": True, "strategy": "token", "observer": None}
    group = {"format": fmt, "input_activations": acts, "output_activations": None, "targets": ["Linear"]}
    return {
        "config_groups": {"group_0": {**group, "weights": _weights_args(scheme, group_size)}},
        "format": fmt,
        "ignore": ignore,
        "kv_cache_scheme": None,
        "quant_method": "compressed-tensors",
        "quantization_status": "compressed",
    }


def quantize_tensor(name: str, weight: torch.Tensor, scheme: str, group_size: int | None) -> dict[str, torch.Tensor]:
    """The compressed-tensors tensors of one linear weight [N, K], named after `name` without `.weight`."""
    base = name.removesuffix(".weight")
    dtype = weight.dtype
    if scheme == "fp8-dynamic":
        scale = (weight.float().abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp_min(1e-12).to(dtype)
        fp8 = (weight.float() / scale.float()).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        return {f"{base}.weight": fp8, f"{base}.weight_scale": scale}
    bits = 4 if scheme == "w4a16-rtn" else 8
    n, k = weight.shape
    if group_size and k % group_size:
        raise ModelLoadError(f"{base}: input size {k} is not divisible by the group size {group_size}")
    codes, scales = rtn_int(weight, bits, group_size, scale_dtype=dtype)
    return {
        f"{base}.weight_packed": pack_int_weight(codes, bits).t().contiguous(),  # codes packed along K
        f"{base}.weight_scale": scales,
        f"{base}.weight_shape": torch.tensor([n, k], dtype=torch.int64),
    }


def _quantized_tensors(
    model_dir: Path, scheme: str, group_size: int | None, ignore: list[str]
) -> Iterator[tuple[str, torch.Tensor]]:
    for name, tensor in iter_checkpoint_tensors(model_dir):
        module = name.removesuffix(".weight")
        if name.endswith(_LINEAR_SUFFIXES) and tensor.dim() == 2 and not is_ignored(module, ignore):
            yield from quantize_tensor(name, tensor, scheme, group_size).items()
        else:
            yield name, tensor


def quantize_checkpoint(
    model_dir: str | Path,
    out_dir: str | Path,
    scheme: str,
    group_size: int | None = 128,
    ignore: list[str] | None = None,
) -> Path:
    """Write `model_dir` quantized with `scheme` (round to nearest) to `out_dir`; returns `out_dir`."""
    if scheme in PLANNED_SCHEMES:
        raise NotImplementedError(f"--scheme {scheme} (calibrated schemes are not implemented yet; use {RTN_SCHEMES})")
    if scheme not in RTN_SCHEMES:
        raise ConfigError(f"unknown scheme {scheme!r}; supported: {', '.join(RTN_SCHEMES)}")
    model_dir, out = Path(model_dir), Path(out_dir)
    config = json.loads((model_dir / "config.json").read_text())
    if "quantization_config" in config:
        raise ConfigError(f"{model_dir} is already quantized ({config['quantization_config'].get('quant_method')})")
    ignore = list(ignore if ignore is not None else ["lm_head"])
    group_size = None if scheme == "fp8-dynamic" or group_size in (None, -1) else group_size
    out.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out)
    for name, tensor in _quantized_tensors(model_dir, scheme, group_size, ignore):
        writer.add(name, tensor)
    writer.close()
    config["quantization_config"] = quantization_config(scheme, group_size, ignore)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for file in COPIED_FILES:
        if (model_dir / file).is_file():
            shutil.copy2(model_dir / file, out / file)
    return out


class ShardWriter:
    """Writes tensors into safetensors shards of about SHARD_BYTES as they come (one shard in memory), then
    names them model-0000i-of-0000n and writes the index; a single shard becomes model.safetensors."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.pending: dict[str, torch.Tensor] = {}
        self.files: list[Path] = []
        self.weight_map: dict[str, int] = {}  # tensor name -> shard number
        self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if self.pending and sum(t.nbytes for t in self.pending.values()) + tensor.nbytes > SHARD_BYTES:
            self._flush()
        self.pending[name] = tensor.contiguous()
        self.total += tensor.nbytes

    def _flush(self) -> None:
        path = self.out / f".shard-{len(self.files):05d}.tmp"
        save_file(self.pending, str(path), metadata={"format": "pt"})
        self.weight_map.update(dict.fromkeys(self.pending, len(self.files)))
        self.files.append(path)
        self.pending = {}

    def close(self) -> None:
        self._flush()
        if len(self.files) == 1:
            self.files[0].rename(self.out / "model.safetensors")
            return
        names = [f"model-{i:05d}-of-{len(self.files):05d}.safetensors" for i in range(1, len(self.files) + 1)]
        for path, name in zip(self.files, names):
            path.rename(self.out / name)
        index = {
            "metadata": {"total_size": self.total},
            "weight_map": {k: names[v] for k, v in self.weight_map.items()},
        }
        (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
