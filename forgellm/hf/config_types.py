"""The normalized view of a Hugging Face config.json that models and layers consume."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding settings. `type` is one of: default, linear, dynamic, llama3, yarn."""

    theta: float = 10000.0
    type: str = "default"
    factor: float = 1.0
    # llama3 and yarn: the context length the model was pre-trained with.
    original_max_position_embeddings: int | None = None
    # llama3
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    # yarn
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True
    partial_rotary_factor: float = 1.0
    # Multimodal RoPE (Qwen2-VL family): the head's frequency pairs in sections rotated by the temporal,
    # height and width position streams in turn; None for ordinary one-stream RoPE.
    mrope_section: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ModelArchConfig:
    """Everything the decoder-only models need from config.json, with v4/v5 spellings resolved."""

    architecture: str  # e.g. "LlamaForCausalLM"
    model_type: str  # e.g. "llama"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    rope: RopeConfig
    qkv_bias: bool = False  # Qwen2 always; Llama when attention_bias
    o_proj_bias: bool = False  # Llama when attention_bias
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before rotary
    sliding_window: int | None = None
    hidden_act: str = "silu"
    torch_dtype: torch.dtype | None = None  # the checkpoint's dtype, None when unstated
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
