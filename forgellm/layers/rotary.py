"""Rotary position embedding (RoPE) angles with the Hugging Face scaling types: default, linear, dynamic,
llama3, yarn.

The model computes cos/sin once per forward pass (`RotaryEmbedding.cos_sin`); every attention layer
then rotates q and k inside its KV-cache write (forgellm.kernels.rotary_and_write_kv), one launch per
layer. Frequencies are computed as transformers 5 computes them (modeling_rope_utils.py), operation for
operation in float32, so cos/sin agree with Hugging Face to the last bit on CPU. For `dynamic` (dynamic
NTK) HF rescales the base from the batch's max position + 1; we rescale each token from the length of
its own sequence (`seq_lens_of_tokens`, ForwardBatch.token_seq_lens), which equals HF for one sequence
per batch and does not depend on what else is batched.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from forgellm.hf.config_types import RopeConfig

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


def _default_inv_freq(theta: float, dim: int) -> Tensor:
    """Return the unscaled inverse frequencies theta^(-2i/dim) for i < dim/2, in float32."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _llama3_inv_freq(rope: RopeConfig, dim: int, original_max_positions: int) -> Tensor:
    """Llama 3.1 scaling: divide low frequencies by `factor`, keep high ones, blend the band between."""
    inv_freq = _default_inv_freq(rope.theta, dim)
    low_freq_wavelen = original_max_positions / rope.low_freq_factor
    high_freq_wavelen = original_max_positions / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (original_max_positions / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    is_medium_freq = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed, scaled)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature correction for a context stretched by `scale`."""
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def _yarn_attention_factor(rope: RopeConfig) -> float:
    """The factor cos/sin are multiplied by: explicit, from mscale/mscale_all_dim, or 0.1*ln(factor)+1."""
    if rope.attention_factor is not None:
        return rope.attention_factor
    # Truthiness on purpose: HF treats 0 like "unset" here.
    if rope.mscale and rope.mscale_all_dim:
        return _yarn_mscale(rope.factor, rope.mscale) / _yarn_mscale(rope.factor, rope.mscale_all_dim)
    return _yarn_mscale(rope.factor)


def _yarn_correction_dim(num_rotations: float, dim: int, theta: float, max_positions: int) -> float:
    """The (fractional) dimension index whose wavelength fits `num_rotations` times in max_positions."""
    return (dim * math.log(max_positions / (num_rotations * 2 * math.pi))) / (2 * math.log(theta))


def _yarn_inv_freq(rope: RopeConfig, dim: int, original_max_positions: int) -> Tensor:
    """YaRN: interpolate low frequencies by `factor`, extrapolate high ones, linear ramp in between."""
    # `or`: HF replaces a 0/None beta by its default as well.
    beta_fast = rope.beta_fast or 32
    beta_slow = rope.beta_slow or 1
    low = _yarn_correction_dim(beta_fast, dim, rope.theta, original_max_positions)
    high = _yarn_correction_dim(beta_slow, dim, rope.theta, original_max_positions)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    # HF clamps to dim - 1 (not dim // 2 - 1); kept for identical ramps.
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid dividing by zero in the ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation_weight = 1 - ramp

    pos_freqs = rope.theta ** (torch.arange(0, dim, 2).float() / dim)
    inv_freq_extrapolation = 1.0 / pos_freqs
    inv_freq_interpolation = 1.0 / (rope.factor * pos_freqs)
    return inv_freq_interpolation * (1 - extrapolation_weight) + inv_freq_extrapolation * extrapolation_weight


class RotaryEmbedding(nn.Module):
    """The cos/sin of RoPE for flattened token positions; frequencies follow the config's scaling type.

    A module (without a forward) so that model.to(device) moves inv_freq, which stays float32.
    """

    inv_freq: Tensor

    def __init__(self, head_dim: int, rope: RopeConfig, max_position_embeddings: int) -> None:
        """Precompute the float32 inverse frequencies for `rope` (Hugging Face semantics)."""
        super().__init__()
        if rope.partial_rotary_factor != 1.0:
            raise NotImplementedError(
                f"partial_rotary_factor={rope.partial_rotary_factor} is not supported: forgellm rotates the "
                "whole head (partial_rotary_factor=1.0), which all supported models use"
            )
        if rope.type not in SUPPORTED_ROPE_TYPES:
            raise NotImplementedError(
                f"rope type {rope.type!r} is not supported; supported types: {', '.join(SUPPORTED_ROPE_TYPES)}"
            )
        if head_dim <= 2 or head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim > 2, got {head_dim}")
        if rope.mrope_section is not None and sum(rope.mrope_section) != head_dim // 2:
            raise ValueError(f"mrope_section {list(rope.mrope_section)} must add up to head_dim / 2 = {head_dim // 2}")
        self.head_dim = head_dim
        self.rope = rope
        self.max_position_embeddings = max_position_embeddings
        # llama3 and yarn are defined relative to the pre-training length; HF falls back to
        # max_position_embeddings when the config does not state it.
        self.original_max_position_embeddings = rope.original_max_position_embeddings or max_position_embeddings
        self.attention_scaling = _yarn_attention_factor(rope) if rope.type == "yarn" else 1.0
        self.register_buffer("inv_freq", self._compute_inv_freq(), persistent=False)
        # M-RoPE: which position stream (0 temporal, 1 height, 2 width) rotates each frequency pair.
        streams = None
        if rope.mrope_section is not None:
            sections = [torch.full((n,), i % 3, dtype=torch.int64) for i, n in enumerate(rope.mrope_section)]
            streams = torch.cat(sections)
        self.register_buffer("mrope_streams", streams, persistent=False)

    def _compute_inv_freq(self) -> Tensor:
        """The float32 inverse frequencies [head_dim/2] on the default device (`dynamic`: the unscaled ones)."""
        rope, dim = self.rope, self.head_dim
        if rope.type == "linear":
            # Dividing the frequencies equals dividing the positions by `factor`.
            return _default_inv_freq(rope.theta, dim) / rope.factor
        if rope.type == "llama3":
            return _llama3_inv_freq(rope, dim, self.original_max_position_embeddings)
        if rope.type == "yarn":
            return _yarn_inv_freq(rope, dim, self.original_max_position_embeddings)
        # default, and dynamic below its threshold, where HF keeps the original frequencies.
        return _default_inv_freq(rope.theta, dim)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        """Follow device moves but keep inv_freq float32 and valid through .to(dtype)/.half()/to_empty()."""
        super()._apply(fn, recurse)
        # A cast to bf16 would lose the angle precision for good, so recompute rather than convert back.
        self.inv_freq = self._compute_inv_freq().to(self.inv_freq.device)
        return self

    def _dynamic_inv_freq(self, seq_lens_of_tokens: Tensor) -> Tensor:
        """Per-token inverse frequencies [T, head_dim/2] with the NTK base rescaled to each sequence's length."""
        dim, factor, max_positions = self.head_dim, self.rope.factor, self.max_position_embeddings
        # Same float32 operations as HF's _compute_dynamic_ntk_parameters, on a [T] length vector.
        base = self.rope.theta * ((factor * seq_lens_of_tokens / max_positions) - (factor - 1)) ** (dim / (dim - 2))
        exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=seq_lens_of_tokens.device).float() / dim
        scaled = 1.0 / (base[:, None] ** exponents)
        # Sequences within the trained length keep the original frequencies, as HF does.
        exceeds = (seq_lens_of_tokens > max_positions)[:, None]
        return torch.where(exceeds, scaled, self.inv_freq)

    def cos_sin(self, positions: Tensor, seq_lens_of_tokens: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """cos and sin [T, head_dim] in float32 for positions [T] ([3, T] with M-RoPE: temporal, height and
        width streams), attention scaling included.

        Only `dynamic` reads seq_lens_of_tokens ([T], each token's sequence length after this step), and
        needs it.
        """
        inv_freq = self.inv_freq
        if self.rope.type == "dynamic":
            if seq_lens_of_tokens is None:
                raise ValueError("dynamic RoPE needs seq_lens_of_tokens (ForwardBatch.token_seq_lens)")
            inv_freq = self._dynamic_inv_freq(seq_lens_of_tokens)
        if self.mrope_streams is not None:
            if positions.dim() == 1:  # text only: the three streams agree
                positions = positions.expand(3, -1)
            # Each frequency pair takes its own stream's position: [3, T] -> [T, head_dim / 2].
            freqs = positions.float().index_select(0, self.mrope_streams).t() * inv_freq
        else:
            freqs = positions[:, None].float() * inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        if self.attention_scaling == 1.0:  # skip two kernels per step in the common case
            return angles.cos(), angles.sin()
        return angles.cos() * self.attention_scaling, angles.sin() * self.attention_scaling

    def extra_repr(self) -> str:
        """Shown by print(module)."""
        return f"head_dim={self.head_dim}, type={self.rope.type}, theta={self.rope.theta}"
