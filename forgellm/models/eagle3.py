"""The EAGLE-3 draft head (`LlamaForCausalLMEagle3` checkpoints): one decoder layer over the target's features.

EAGLE-3 drafts from the target's own hidden states. At the position of token t_i it takes the target's
residual stream at three depths (low, middle, high layers: `fc` fuses the 3 x H_target features into H)
and the embedding of the next token t_{i+1}, normalises both (`hidden_norm`, `input_layernorm`) and
feeds their concatenation (2H wide) to one Llama decoder layer (`midlayer`); `norm` and `lm_head` then
predict t_{i+2} over a reduced draft vocabulary, mapped back to target ids by `d2t` (target id = draft
id + d2t[draft id]). Further guesses feed the layer its own output (H wide, no `fc`) with the embedding
of the previous guess. Checkpoints without `embed_tokens.weight` share the target's embedding.

Checkpoint layout: `fc.weight`, `midlayer.{input_layernorm,hidden_norm,post_attention_layernorm}.weight`,
`midlayer.self_attn.{q,k,v,o}_proj.weight`, `midlayer.mlp.{gate,up,down}_proj.weight`, `norm.weight`,
`lm_head.weight`, `d2t`, `t2d` (unused here), optionally `embed_tokens.weight`; config.json is a
LlamaConfig with `draft_vocab_size` and optionally `target_hidden_size`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from forgellm.distributed import SINGLE_DEVICE
from forgellm.errors import ModelLoadError
from forgellm.hf.checkpoint import iter_checkpoint_tensors, read_checkpoint_tensor
from forgellm.hf.config import load_model_config
from forgellm.hf.config_types import ModelArchConfig
from forgellm.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from forgellm.layers.linear import RowParallelLinear
from forgellm.layers.norm import RMSNorm
from forgellm.layers.rotary import RotaryEmbedding
from forgellm.models.llama import LlamaAttention, LlamaMLP
from forgellm.models.weight_loading import WeightMap, load_weights
from forgellm.worker.forward_batch import ForwardBatch

EAGLE3_ARCHITECTURES = ("LlamaForCausalLMEagle3", "Eagle3LlamaForCausalLM")


def default_aux_layers(num_target_layers: int) -> tuple[int, int, int]:
    """The target layers whose input residual stream EAGLE-3 reads (low, middle, high), as published heads use
    (2, L / 2, L - 3), kept inside the model for targets of fewer than 6 layers."""
    last = num_target_layers - 1
    return (min(2, last), num_target_layers // 2, max(num_target_layers - 3, 0))


class TokenMap(nn.Module):
    """The `d2t` offsets: draft id -> target id offset, an int64 buffer loaded from the checkpoint."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.register_buffer("offsets", torch.zeros(size, dtype=torch.int64))

    def load(self, param_name: str, loaded: torch.Tensor, shard: str | int | None, ckpt_name: str) -> None:
        if loaded.shape != self.offsets.shape:
            raise ModelLoadError(f"{ckpt_name!r} has shape {tuple(loaded.shape)}, expected {tuple(self.offsets.shape)}")
        self.offsets.copy_(loaded.to(torch.int64))


class Eagle3Head(nn.Module):
    """The draft head: `forward` gives its pre-norm output (fed back for the next guess), `compute_logits` the
    draft-vocabulary logits, `to_target_ids` maps draft ids to target ids."""

    def __init__(
        self, config: ModelArchConfig, target_hidden_size: int, dtype: torch.dtype, own_embedding: bool
    ) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.draft_vocab_size = int(config.raw.get("draft_vocab_size", config.vocab_size))
        self.fc = RowParallelLinear(3 * target_hidden_size, hidden, prefix="fc", dtype=dtype)
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, hidden, dtype=dtype) if own_embedding else None
        self.input_layernorm = RMSNorm(hidden, config.rms_norm_eps, dtype=dtype)
        self.hidden_norm = RMSNorm(hidden, config.rms_norm_eps, dtype=dtype)
        # The layer's attention reads [embedding | feature]: twice the hidden size.
        self.self_attn = LlamaAttention(config, dtype, SINGLE_DEVICE, None, "midlayer.self_attn", 2 * hidden)
        self.post_attention_layernorm = RMSNorm(hidden, config.rms_norm_eps, dtype=dtype)
        self.mlp = LlamaMLP(config, dtype, SINGLE_DEVICE, None, "midlayer.mlp")
        self.norm = RMSNorm(hidden, config.rms_norm_eps, dtype=dtype)
        self.lm_head = ParallelLMHead(self.draft_vocab_size, hidden, dtype=dtype)
        self.d2t = TokenMap(self.draft_vocab_size)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope, config.max_position_embeddings)
        self.target_embedding: VocabParallelEmbedding | None = None  # set by share_embedding when not own

    def share_embedding(self, embedding: VocabParallelEmbedding) -> None:
        """Use the target's token embedding (heads published without their own)."""
        if embedding.weight.shape[-1] != self.config.hidden_size:
            raise ModelLoadError(
                f"the EAGLE-3 head has hidden size {self.config.hidden_size} and no embedding of its own, but the "
                f"target's embedding is {embedding.weight.shape[-1]} wide"
            )
        self.target_embedding = embedding

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, features: torch.Tensor, batch: ForwardBatch
    ) -> torch.Tensor:
        """[T, H] pre-norm outputs; `features` [T, 3 H_target] (the target's) or [T, H] (the head's own)."""
        embedding = self.embed_tokens if self.embed_tokens is not None else self.target_embedding
        embeds = embedding(input_ids)
        hidden = self.fc(features) if features.shape[-1] != self.config.hidden_size else features
        mixed = torch.cat([self.input_layernorm(embeds), self.hidden_norm(hidden)], dim=-1)
        attended = self.self_attn(self.rotary.cos_sin(positions, None), mixed, batch)
        normed, residual = self.post_attention_layernorm(attended, hidden)
        return self.mlp(normed) + residual

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits over the draft vocabulary for pre-norm outputs [N, H]."""
        return self.lm_head.compute_logits(self.norm(hidden))

    def to_target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids + self.d2t.offsets[draft_ids]

    def weight_map(self) -> WeightMap:
        wmap = WeightMap(ignored_suffixes=("rotary_emb.inv_freq",))
        wmap.ignore("t2d")
        for linear in (self.fc, self.self_attn.qkv_proj, self.self_attn.o_proj, self.mlp.gate_up_proj,
                       self.mlp.down_proj, self.lm_head):  # fmt: skip
            wmap.add_linear(linear)
        for name in ("input_layernorm", "hidden_norm", "post_attention_layernorm"):
            wmap.add(f"midlayer.{name}.weight", getattr(self, name), "weight")
        wmap.add("norm.weight", self.norm, "weight")
        wmap.add("d2t", self.d2t, "offsets")
        if self.embed_tokens is not None:
            wmap.add("embed_tokens.weight", self.embed_tokens, "weight")
        return wmap


def load_eagle3_config(path: str | Path) -> ModelArchConfig:
    """The head's config.json, refused unless it describes an EAGLE-3 head."""
    config = load_model_config(path)
    if config.architecture not in EAGLE3_ARCHITECTURES:
        raise ModelLoadError(
            f"{path}: architecture {config.architecture!r} is not an EAGLE-3 head ({', '.join(EAGLE3_ARCHITECTURES)})"
        )
    return config


def load_eagle3_head(
    path: str | Path, target: ModelArchConfig, dtype: torch.dtype, device: torch.device, random_weights: bool = False
) -> Eagle3Head:
    """Build the head for `target` and load its checkpoint (or draw random weights, for benchmarks)."""
    config = load_eagle3_config(path)
    target_hidden = int(config.raw.get("target_hidden_size", target.hidden_size))
    tensors = {} if random_weights else dict(iter_checkpoint_tensors(Path(path)))
    own_embedding = random_weights or "embed_tokens.weight" in tensors
    with torch.device(device):
        head = Eagle3Head(config, target_hidden, dtype, own_embedding)
    if random_weights:
        from forgellm.worker.model_runner import init_random_weights  # the runner imports the models

        init_random_weights(head, device)
    else:
        load_weights(head.weight_map(), tensors.items())
    return head.eval()


# Where checkpoints keep the token embedding: a causal LM's, and a vision-language model's language model's.
_EMBEDDING_NAMES = ("model.embed_tokens.weight", "model.language_model.embed_tokens.weight")


def load_full_embedding(
    model_dir: str | Path, target: ModelArchConfig, dtype: torch.dtype, device: torch.device, random: bool = False
) -> VocabParallelEmbedding:
    """The target's whole token embedding on one device, read from its checkpoint (random for benchmarks), for a
    head that shares it while the target's own is split over tensor-parallel ranks (whose lookups all-reduce)."""
    with torch.device(device):
        embedding = VocabParallelEmbedding(target.vocab_size, target.hidden_size, dtype=dtype)
    if random:
        from forgellm.worker.model_runner import init_random_weights  # the runner imports the models

        init_random_weights(embedding, device)
        return embedding
    found = read_checkpoint_tensor(model_dir, _EMBEDDING_NAMES)
    if found is None:
        raise ModelLoadError(f"{model_dir} has no token embedding ({' or '.join(_EMBEDDING_NAMES)}) for the head")
    name, tensor = found
    embedding.load("weight", tensor.to(dtype), None, name)
    return embedding
