"""Reading Hugging Face artefacts: config.json, safetensors checkpoints, tokenizers and chat templates."""

from forgellm.hf.chat_template import compile_chat_template, render_chat_template
from forgellm.hf.checkpoint import (
    CheckpointIndex,
    iter_checkpoint_tensors,
    load_checkpoint_index,
)
from forgellm.hf.config import (
    SUPPORTED_ROPE_TYPES,
    load_model_config,
    parse_model_config,
    resolve_dtype,
)
from forgellm.hf.config_types import ModelArchConfig, RopeConfig
from forgellm.hf.generation_config import GenerationDefaults, load_generation_defaults
from forgellm.hf.tokenizer import Tokenizer

__all__ = [
    "SUPPORTED_ROPE_TYPES",
    "CheckpointIndex",
    "GenerationDefaults",
    "ModelArchConfig",
    "RopeConfig",
    "Tokenizer",
    "compile_chat_template",
    "iter_checkpoint_tensors",
    "load_checkpoint_index",
    "load_generation_defaults",
    "load_model_config",
    "parse_model_config",
    "render_chat_template",
    "resolve_dtype",
]
