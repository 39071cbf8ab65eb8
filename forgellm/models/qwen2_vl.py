"""Qwen2-VL and Qwen2.5-VL: a vision tower whose merged patch embeddings take the place of the image and
video placeholder tokens' embeddings in a Qwen2 language model with multimodal rotary (M-RoPE).

The language model is LlamaForCausalLM (Qwen2 flags; M-RoPE lives in RotaryEmbedding and needs only [3, T]
positions); the towers are in qwen2_vl_vision.py and qwen2_5_vl_vision.py. The engine runs the tower
(`encode_images`) once per image, caches its output, and hands each step the rows its placeholder tokens
need through ForwardBatch.mm_embeds / mm_token_indices. Under tensor or pipeline parallelism the language
model is sharded and the tower lives on global rank 0 alone (the engine's rank, which encodes): the rows
reach the first stage's other ranks inside the step's batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from forgellm.distributed import SINGLE_DEVICE, ParallelContext
from forgellm.distributed.pipeline import StageActivations
from forgellm.errors import ModelLoadError
from forgellm.hf.config_types import ModelArchConfig
from forgellm.models.llama import LlamaForCausalLM
from forgellm.models.qwen2_5_vl_vision import Qwen2_5VisionTransformer
from forgellm.models.qwen2_vl_vision import VISION_PREFIXES, Qwen2VisionTransformer, VisionConfig
from forgellm.quantization.config import QuantizationConfig
from forgellm.worker.forward_batch import ForwardBatch

# transformers 5 saves the language model under model.language_model.*; published checkpoints under model.*.
_LANGUAGE_MODEL_PREFIX = "model.language_model."


class Qwen2VLForConditionalGeneration(nn.Module):
    """Vision tower + Qwen2 language model; `forward` takes the images' embeddings from the ForwardBatch."""

    def __init__(
        self,
        config: ModelArchConfig,
        dtype: torch.dtype,
        parallel: ParallelContext = SINGLE_DEVICE,
        quant_config: QuantizationConfig | None = None,
    ) -> None:
        super().__init__()
        vision_config = config.raw.get("vision_config")
        if not isinstance(vision_config, dict):
            raise ModelLoadError(f"{config.architecture} needs a vision_config object in config.json")
        if config.rope.mrope_section is None:
            raise ModelLoadError(f"{config.architecture} needs rope mrope_section in config.json")
        self.config = config
        self.parallel = parallel
        self.language_model = LlamaForCausalLM(config, dtype, parallel, quant_config)
        self.vision_config = VisionConfig.from_hf(vision_config, config.model_type)
        tower = Qwen2VisionTransformer if self.vision_config.variant == "qwen2_vl" else Qwen2_5VisionTransformer
        # Quantization applies to the language model only: the tower is small and runs once per image, on the
        # engine's rank (the others get its output with each step's batch).
        self.visual = tower(self.vision_config).to(dtype) if parallel.rank == 0 else None
        self.image_token_id = config.raw.get("image_token_id")
        self.video_token_id = config.raw.get("video_token_id")

    @property
    def dtype(self) -> torch.dtype:
        """The activations' dtype (what pipeline stages pass on)."""
        return self.language_model.dtype

    @property
    def aux_hidden(self) -> torch.Tensor | None:
        """The language model's captured hidden states (EAGLE-3), if any."""
        return self.language_model.aux_hidden

    def encode_images(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """The language-model embeddings [sum of t*h*w / merge^2, hidden] of preprocessed images or videos."""
        return self.visual(pixel_values.to(self.visual.patch_embed.proj.weight.dtype), grid_thw)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        batch: ForwardBatch,
        stage_input: StageActivations | None = None,
    ) -> torch.Tensor | StageActivations:
        """Final hidden states [T, hidden]; positions are M-RoPE's [3, T] (or [T] for text alone). A later pipeline
        stage starts from `stage_input` (the images are in it already); a stage before the last returns its
        residual stream."""
        embeds = None
        if batch.mm_embeds is not None and stage_input is None:
            embeds = self.language_model.embed_tokens(input_ids)
            embeds = embeds.index_copy(0, batch.mm_token_indices, batch.mm_embeds.to(embeds.dtype))
        return self.language_model(input_ids, positions, batch, inputs_embeds=embeds, stage_input=stage_input)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits [N, vocab] for the selected hidden states [N, hidden]."""
        return self.language_model.compute_logits(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load both checkpoint layouts; a missing or unexpected tensor is a ModelLoadError naming it."""
        vision: list[tuple[str, torch.Tensor]] = []

        def language(named: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in named:
                prefix = next((p for p in VISION_PREFIXES if name.startswith(p)), None)
                if prefix is not None:
                    vision.append((name[len(prefix) :], tensor))
                elif name.startswith(_LANGUAGE_MODEL_PREFIX):
                    yield "model." + name[len(_LANGUAGE_MODEL_PREFIX) :], tensor
                else:
                    yield name, tensor

        self.language_model.load_weights(language(weights))
        if self.visual is not None:  # rank 0's (the other ranks skip the tower's tensors)
            self.visual.load_weights(vision)
