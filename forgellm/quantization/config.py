"""QuantizationConfig: which LinearMethod runs each linear layer, and how the KV cache is stored.

A config is made from a checkpoint's `quantization_config` (or ModelOpt's hf_quant_config.json), or
from `LLM(quantization=...)` to quantize an unquantized checkpoint at load. Layers ask it for their
method by the checkpoint names of their parts, so an `ignore` list (e.g. `lm_head`) leaves exactly
those layers unquantized.
"""

from __future__ import annotations

import fnmatch
import re
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from forgellm.errors import ModelLoadError
from forgellm.layers.linear_method import UNQUANTIZED, LinearMethod

if TYPE_CHECKING:
    from forgellm.layers.linear import LinearBase


class QuantizationConfig(ABC):
    """Picks a LinearMethod per layer; says the KV-cache dtype and where a checkpoint keeps KV scales."""

    name: str = "none"
    kv_cache_dtype: str = "auto"  # "fp8" when the checkpoint calibrated FP8 KV-cache scales

    def __init__(self, ignore: list[str] | None = None) -> None:
        self.ignore = list(ignore or [])

    def linear_method(self, layer: LinearBase) -> LinearMethod:
        """The method for `layer`: unquantized when its parts are ignored, else the scheme's."""
        ignored = [is_ignored(name, self.ignore) for name in layer.part_names]
        if all(ignored):
            return UNQUANTIZED
        if any(ignored):
            raise ModelLoadError(
                f"the quantization config ignores some but not all of {layer.part_names}, which forgellm "
                "fuses into one matmul; quantize all of them or none"
            )
        return self.quantized_method(layer)

    @abstractmethod
    def quantized_method(self, layer: LinearBase) -> LinearMethod:
        """The scheme's method for a layer that is not ignored."""

    def kv_scale_names(self, attention_prefix: str) -> dict[str, str]:
        """Checkpoint name -> "k_scale" | "v_scale" for the attention layer at `attention_prefix`."""
        return {
            f"{attention_prefix}.k_scale": "k_scale",
            f"{attention_prefix}.v_scale": "v_scale",
            f"{attention_prefix}.k_proj.k_scale": "k_scale",
            f"{attention_prefix}.v_proj.v_scale": "v_scale",
        }

    def describe(self) -> str:
        """The scheme in a few words, for the start-up log and /v1/models."""
        return self.name


def is_ignored(name: str, patterns: list[str]) -> bool:
    """Whether checkpoint module `name` matches an ignore entry: an exact name, a `re:` regex
    (compressed-tensors), or a shell wildcard (ModelOpt's `*lm_head*`)."""
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.fullmatch(pattern[3:], name) or re.fullmatch(pattern[3:], name.removeprefix("model.")):
                return True
        elif name == pattern or name.endswith("." + pattern) or fnmatch.fnmatchcase(name, pattern):
            return True
    return False
