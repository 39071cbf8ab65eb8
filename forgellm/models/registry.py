"""Hugging Face architecture name -> model class."""

from __future__ import annotations

from torch import nn

from forgellm.errors import ModelLoadError
from forgellm.models.llama import LlamaForCausalLM
from forgellm.models.qwen2_vl import Qwen2VLForConditionalGeneration

# Qwen2, Qwen3 and Mistral are Llama with config flags (bias, q/k norm, sliding window).
_ARCHITECTURES: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
    # Text prompts only so far: images through the engine are not wired yet (InputProcessor says so).
    "Qwen2VLForConditionalGeneration": Qwen2VLForConditionalGeneration,
    "Qwen2_5_VLForConditionalGeneration": Qwen2VLForConditionalGeneration,
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
