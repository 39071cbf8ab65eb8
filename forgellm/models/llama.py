"""The Llama family: Llama, Mistral, Qwen2 and Qwen3.

They differ only in what ModelArchConfig carries: q/k/v bias (Qwen2, Llama attention_bias), q/k
RMSNorm (Qwen3), sliding-window attention (Mistral), tied embeddings and the rotary scaling.
q/k/v and gate/up are fused at load time into one matmul each.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from forgellm.distributed import SINGLE_DEVICE, ParallelContext
from forgellm.distributed.pipeline import StageActivations
from forgellm.hf.config_types import ModelArchConfig
from forgellm.layers.activation import SiluAndMul
from forgellm.layers.attention import Attention
from forgellm.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from forgellm.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from forgellm.layers.norm import RMSNorm
from forgellm.layers.rotary import RotaryEmbedding
from forgellm.models.weight_loading import WeightMap, load_weights
from forgellm.quantization.config import QuantizationConfig
from forgellm.worker.forward_batch import ForwardBatch


class LlamaAttention(nn.Module):
    """Self-attention: fused qkv projection, optional q/k norm, rotary, paged attention, output proj."""

    def __init__(
        self,
        config: ModelArchConfig,
        dtype: torch.dtype,
        parallel: ParallelContext,
        quant_config: QuantizationConfig | None,
        prefix: str,
        input_size: int | None = None,
    ) -> None:
        """`input_size`: width of the layer's input when it is not hidden_size (the EAGLE-3 head's 2 x hidden)."""
        super().__init__()
        d = config.head_dim
        self.num_heads = config.num_attention_heads // parallel.tp_size
        self.num_kv_heads = parallel.kv_heads(config.num_key_value_heads)[0]
        self.head_dim = d
        self.qkv_proj = QKVParallelLinear(
            input_size or config.hidden_size,
            d,
            config.num_attention_heads,
            config.num_key_value_heads,
            prefixes=[f"{prefix}.q_proj", f"{prefix}.k_proj", f"{prefix}.v_proj"],
            bias=config.qkv_bias,
            dtype=dtype,
            parallel=parallel,
            quant_config=quant_config,
        )
        self.o_proj = RowParallelLinear(
            config.num_attention_heads * d,
            config.hidden_size,
            prefix=f"{prefix}.o_proj",
            bias=config.o_proj_bias,
            dtype=dtype,
            parallel=parallel,
            quant_config=quant_config,
        )
        self.q_norm = RMSNorm(d, config.rms_norm_eps, dtype=dtype) if config.qk_norm else None
        self.k_norm = RMSNorm(d, config.rms_norm_eps, dtype=dtype) if config.qk_norm else None
        self.attn = Attention(self.num_heads, self.num_kv_heads, d, d**-0.5, config.sliding_window)

    def forward(
        self, rope: tuple[torch.Tensor, torch.Tensor], hidden: torch.Tensor, batch: ForwardBatch
    ) -> torch.Tensor:
        """`rope` is the step's (cos, sin), computed once per forward pass for every layer."""
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = self.qkv_proj(hidden).split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        # Rotary is fused into the attention layer's KV-cache write: one kernel per layer instead of two.
        return self.o_proj(self.attn(q, k, v, batch, rope))


class LlamaMLP(nn.Module):
    """Gated MLP: fused gate|up projection, SiLU-and-mul, down projection."""

    def __init__(
        self,
        config: ModelArchConfig,
        dtype: torch.dtype,
        parallel: ParallelContext,
        quant_config: QuantizationConfig | None,
        prefix: str,
    ) -> None:
        super().__init__()
        size = config.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(
            config.hidden_size,
            [size, size],
            prefixes=[f"{prefix}.gate_proj", f"{prefix}.up_proj"],
            bias=config.mlp_bias,
            dtype=dtype,
            parallel=parallel,
            quant_config=quant_config,
        )
        self.act = SiluAndMul()
        self.down_proj = RowParallelLinear(
            size,
            config.hidden_size,
            prefix=f"{prefix}.down_proj",
            bias=config.mlp_bias,
            dtype=dtype,
            parallel=parallel,
            quant_config=quant_config,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    """Pre-norm transformer block; the residual add is fused into the next norm."""

    def __init__(
        self,
        config: ModelArchConfig,
        dtype: torch.dtype,
        parallel: ParallelContext,
        quant_config: QuantizationConfig | None,
        prefix: str,
    ) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype=dtype)
        self.self_attn = LlamaAttention(config, dtype, parallel, quant_config, f"{prefix}.self_attn")
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype=dtype)
        self.mlp = LlamaMLP(config, dtype, parallel, quant_config, f"{prefix}.mlp")

    def forward(
        self,
        rope: tuple[torch.Tensor, torch.Tensor],
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        batch: ForwardBatch,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(rope, hidden, batch)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaForCausalLM(nn.Module):
    """Decoder-only LM: `forward` gives hidden states, `compute_logits` the float32 logits.

    Under pipeline parallelism a stage builds only its layers (the others are empty placeholders), the first
    stage the token embedding, the last the final norm and LM head; a stage's forward takes and returns the
    residual stream (StageActivations) instead of token ids or final hidden states where it has no such end.
    """

    def __init__(
        self,
        config: ModelArchConfig,
        dtype: torch.dtype,
        parallel: ParallelContext = SINGLE_DEVICE,
        quant_config: QuantizationConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.dtype = dtype  # the activations' (what pipeline stages pass on)
        self.parallel = parallel
        self.quant_config = quant_config
        first, last = parallel.is_first_stage, parallel.is_last_stage
        tied = config.tie_word_embeddings
        self.embed_tokens = None
        if first or (last and tied):  # a tied LM head is the embedding table
            self.embed_tokens = VocabParallelEmbedding(
                config.vocab_size, config.hidden_size, dtype=dtype, parallel=parallel
            )
        self.stage_layers = parallel.stage_layers(config.num_hidden_layers)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, dtype, parallel, quant_config, f"model.layers.{i}")
            if i in self.stage_layers
            else nn.Identity()  # another stage's layer
            for i in range(config.num_hidden_layers)
        )
        # (index, layer) of this stage, built once: indexing a ModuleList costs a string lookup per layer per step.
        self._stage = tuple((i, self.layers[i]) for i in self.stage_layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype=dtype) if last else None
        # Every layer rotates by the same angles: compute cos/sin once per step, not once per layer.
        self.rotary = RotaryEmbedding(config.head_dim, config.rope, config.max_position_embeddings)
        if not last:
            self.lm_head = None
        elif tied:
            self.lm_head = self.embed_tokens
        else:
            self.lm_head = ParallelLMHead(
                config.vocab_size, config.hidden_size, dtype=dtype, parallel=parallel, quant_config=quant_config
            )
        # EAGLE-3 reads the residual stream entering a few layers: copied into aux_hidden by every forward.
        self.aux_hidden_layers: tuple[int, ...] = ()
        self.aux_hidden: torch.Tensor | None = None

    def capture_aux_hidden_states(self, layers: tuple[int, ...], max_tokens: int) -> None:
        """Make every forward write the residual stream entering `layers` to `aux_hidden` [T, len(layers) * H]
        (a fixed buffer, so CUDA graphs capture the copies too)."""
        if any(not 0 <= i < len(self.layers) for i in layers):
            raise ValueError(f"aux hidden-state layers {layers} outside the model's {len(self.layers)} layers")
        self.aux_hidden_layers = tuple(layers)
        device = next(self.parameters()).device  # a later pipeline stage has no embedding
        width = len(layers) * self.config.hidden_size
        self.aux_hidden = torch.zeros(max_tokens, width, dtype=self.dtype, device=device)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        batch: ForwardBatch,
        inputs_embeds: torch.Tensor | None = None,
        stage_input: StageActivations | None = None,
    ) -> torch.Tensor | StageActivations:
        """Final hidden states [T, hidden]; `inputs_embeds` replaces the token embeddings (a VLM's, with
        its images' in place of their placeholders). A later pipeline stage starts from `stage_input`, the
        stage before's output; a stage before the last returns its residual stream."""
        if stage_input is not None:
            hidden, residual = stage_input.hidden, stage_input.residual
        else:
            hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
            residual = None
        token_seq_lens = batch.token_seq_lens if self.config.rope.type == "dynamic" else None
        rope = self.rotary.cos_sin(positions, token_seq_lens)
        size, num_tokens = self.config.hidden_size, input_ids.shape[0]
        for index, layer in self._stage:
            if index in self.aux_hidden_layers:
                stream = hidden if residual is None else hidden + residual
                for slot, layer_index in enumerate(self.aux_hidden_layers):  # a small target may repeat a layer
                    if layer_index == index:
                        self.aux_hidden[:num_tokens, slot * size : (slot + 1) * size].copy_(stream)
            hidden, residual = layer(rope, hidden, residual, batch)
        if self.norm is None:
            return StageActivations(hidden, residual)
        hidden, _ = self.norm(hidden, residual)
        return hidden

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits [N, vocab] for the selected hidden states [N, hidden]."""
        return self.lm_head.compute_logits(hidden)

    def weight_map(self) -> WeightMap:
        """Checkpoint tensor name -> (module, parameter, shard) for every tensor this model loads."""
        # Another pipeline stage's tensors are in the checkpoint too: skipped by name.
        others = tuple(f"model.layers.{i}." for i in range(self.config.num_hidden_layers) if i not in self.stage_layers)
        wmap = WeightMap(ignored_suffixes=("rotary_emb.inv_freq",), ignored_prefixes=others)
        if self.embed_tokens is not None:
            wmap.add("model.embed_tokens.weight", self.embed_tokens, "weight")
        else:
            wmap.ignore("model.embed_tokens.weight")
        if self.norm is not None:
            wmap.add("model.norm.weight", self.norm, "weight")
        else:
            wmap.ignored_prefixes += ("model.norm.", "lm_head.")
        if self.config.tie_word_embeddings:
            wmap.ignore("lm_head.weight")  # some tied checkpoints still store a copy
        elif self.lm_head is not None:
            wmap.add_linear(self.lm_head)
        for i in self.stage_layers:
            layer = self.layers[i]
            prefix = f"model.layers.{i}"
            attn, mlp = layer.self_attn, layer.mlp
            for linear in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj):
                wmap.add_linear(linear)
            if attn.q_norm is not None and attn.k_norm is not None:
                wmap.add(f"{prefix}.self_attn.q_norm.weight", attn.q_norm, "weight")
                wmap.add(f"{prefix}.self_attn.k_norm.weight", attn.k_norm, "weight")
            if self.quant_config is not None:
                for name, param in self.quant_config.kv_scale_names(f"{prefix}.self_attn").items():
                    wmap.add(name, attn.attn, param, optional=True)
            wmap.add(f"{prefix}.input_layernorm.weight", layer.input_layernorm, "weight")
            wmap.add(f"{prefix}.post_attention_layernorm.weight", layer.post_attention_layernorm, "weight")
        return wmap

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load checkpoint tensors; a missing or unexpected tensor is a ModelLoadError naming it."""
        load_weights(self.weight_map(), weights)
