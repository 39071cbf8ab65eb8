"""Which QuantizationConfig a model loads with: the checkpoint's own (config.json's
`quantization_config`, ModelOpt's hf_quant_config.json), or quantization at load when asked."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from forgellm.errors import ConfigError, ModelLoadError
from forgellm.kernels.fp8_quant import FP8_DTYPE
from forgellm.quantization.config import QuantizationConfig
from forgellm.quantization.formats.awq_gptq import AwqGptqConfig
from forgellm.quantization.formats.compressed_tensors import CompressedTensorsConfig
from forgellm.quantization.formats.hf_fp8 import HfFp8Config
from forgellm.quantization.formats.modelopt import ModelOptConfig, read_modelopt_config
from forgellm.quantization.online import OnlineQuantConfig

CHECKPOINT_METHODS = ("compressed-tensors", "modelopt", "awq", "gptq", "fp8")
KV_CACHE_DTYPES = ("auto", "fp8")
MODELOPT_FILE = "hf_quant_config.json"

logger = logging.getLogger(__name__)


def checkpoint_quantization(model_dir: Path | None, raw: dict[str, Any], nvfp4_mode: str) -> QuantizationConfig | None:
    """The quantization a checkpoint was saved with, or None for a plain one."""
    hf_quant = model_dir / MODELOPT_FILE if model_dir is not None else None
    modelopt_file = json.loads(hf_quant.read_text()) if hf_quant is not None and hf_quant.is_file() else None
    config = raw.get("quantization_config")
    if config is None and modelopt_file is None:
        return None
    method = "modelopt" if modelopt_file is not None else str((config or {}).get("quant_method", "")).lower()
    if method == "modelopt":
        return ModelOptConfig(read_modelopt_config(raw, modelopt_file), nvfp4_mode)
    if method == "compressed-tensors":
        return CompressedTensorsConfig(config, nvfp4_mode)
    if method in ("awq", "gptq"):
        return AwqGptqConfig(config)
    if method == "fp8":
        return HfFp8Config(config)
    raise ModelLoadError(
        f"quant_method {method or None!r} in config.json's quantization_config is not supported; "
        f"supported: {', '.join(CHECKPOINT_METHODS)}"
    )


def resolve_quantization(
    model_dir: Path | None,
    raw: dict[str, Any],
    quantization: str | None,
    group_size: int | None = None,
    nvfp4_mode: str = "fp8",
) -> QuantizationConfig | None:
    """The checkpoint's quantization, or `quantization` applied at load to an unquantized checkpoint."""
    saved = checkpoint_quantization(model_dir, raw, nvfp4_mode)
    if quantization is None:
        return saved
    if saved is not None:
        raise ConfigError(
            f"the checkpoint is already quantized ({saved.describe()}); drop quantization={quantization!r}"
        )
    return OnlineQuantConfig(quantization, group_size, nvfp4_mode)


def resolve_kv_cache_dtype(
    option: str, quant_config: QuantizationConfig | None, model_dtype: torch.dtype
) -> torch.dtype:
    """ "fp8" stores K/V as e4m3 (with the checkpoint's k/v scales where it has them); "auto" is the model
    dtype, as in vLLM, even for a checkpoint that calibrated FP8 KV scales (the start-up log says so)."""
    if option not in KV_CACHE_DTYPES:
        raise ConfigError(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {option!r}")
    if option == "fp8":
        return FP8_DTYPE
    if quant_config is not None and quant_config.kv_cache_dtype == "fp8":
        logger.info("the checkpoint has FP8 KV-cache scales; kv_cache_dtype='fp8' stores the KV cache in FP8 with them")
    return model_dtype
