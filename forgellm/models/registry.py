"""Hugging Face architecture name -> model class."""

from __future__ import annotations

from torch import nn

from forgellm.errors import ModelLoadError
from forgellm.models.llama import LlamaForCausalLM

# Qwen2, Qwen3 and Mistral are Llama with config flags (bias, q/k norm, sliding window).
_ARCHITECTURES: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
}


def supported_architectures() -> list[str]:
    """The architecture names (config.json `architectures`) forgellm can run."""
    return sorted(_ARCHITECTURES)


def get_model_class(architecture: str) -> type[nn.Module]:
    """The class implementing `architecture`, or a ModelLoadError listing what is supported."""
    try:
        return _ARCHITECTURES[architecture]
    except KeyError:
        raise ModelLoadError(
            f"architecture {architecture!r} is not supported; supported: {', '.join(supported_architectures())}"
        ) from None
