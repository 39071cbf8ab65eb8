"""RotaryEmbedding and apply_rotary against transformers' Llama rotary embedding, for every RoPE type."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama import modeling_llama

from forgellm.hf.config_types import RopeConfig
from forgellm.kernels import apply_rotary
from forgellm.kernels.rotary import apply_rotary_ref
from forgellm.layers.rotary import RotaryEmbedding, token_seq_lens

HEAD_DIM = 64
NUM_Q_HEADS = 4
NUM_KV_HEADS = 2
MAX_POSITIONS = 128

# (RopeConfig, max_position_embeddings); positions tested run well past both limits.
CASES: dict[str, tuple[RopeConfig, int]] = {
    "default": (RopeConfig(theta=10000.0), MAX_POSITIONS),
    "default-theta500k": (RopeConfig(theta=500000.0), MAX_POSITIONS),
    "linear-2": (RopeConfig(type="linear", factor=2.0), MAX_POSITIONS),
    "linear-4.5": (RopeConfig(type="linear", factor=4.5, theta=1e6), MAX_POSITIONS),
    "dynamic-2": (RopeConfig(type="dynamic", factor=2.0), MAX_POSITIONS),
    "dynamic-8": (RopeConfig(type="dynamic", factor=8.0, theta=500000.0), MAX_POSITIONS),
    "llama3-8": (
        RopeConfig(type="llama3", factor=8.0, theta=500000.0, original_max_position_embeddings=64),
        MAX_POSITIONS,
    ),
    "llama3-32-custom-bands": (
        RopeConfig(
            type="llama3", factor=32.0, low_freq_factor=2.0, high_freq_factor=8.0, original_max_position_embeddings=96
        ),
        MAX_POSITIONS,
    ),
    "yarn-4": (RopeConfig(type="yarn", factor=4.0, original_max_position_embeddings=32), MAX_POSITIONS),
    "yarn-no-original": (RopeConfig(type="yarn", factor=4.0), MAX_POSITIONS),
    # Explicit factor that does not match max/original: HF warns and uses the explicit factor.
    "yarn-original-smaller": (
        RopeConfig(type="yarn", factor=3.0, theta=1e6, original_max_position_embeddings=40),
        256,
    ),
    "yarn-attention-factor": (
        RopeConfig(type="yarn", factor=4.0, attention_factor=1.25, original_max_position_embeddings=32),
        MAX_POSITIONS,
    ),
    "yarn-mscale": (
        RopeConfig(type="yarn", factor=16.0, mscale=1.0, mscale_all_dim=0.5, original_max_position_embeddings=32),
        512,
    ),
    "yarn-betas-no-truncate": (
        RopeConfig(
            type="yarn", factor=8.0, beta_fast=16.0, beta_slow=2.0, truncate=False, original_max_position_embeddings=32
        ),
        256,
    ),
}


def _hf_rope_parameters(rope: RopeConfig) -> dict:
    """The transformers 5 `rope_parameters` dict equivalent to `rope`, with only the keys its type reads."""
    params: dict = {"rope_type": rope.type, "rope_theta": rope.theta}
    if rope.type != "default":
        params["factor"] = rope.factor
    if rope.type in ("llama3", "yarn") and rope.original_max_position_embeddings is not None:
        params["original_max_position_embeddings"] = rope.original_max_position_embeddings
    if rope.type == "llama3":
        params.update(low_freq_factor=rope.low_freq_factor, high_freq_factor=rope.high_freq_factor)
    if rope.type == "yarn":
        params.update(beta_fast=rope.beta_fast, beta_slow=rope.beta_slow, truncate=rope.truncate)
        for key in ("attention_factor", "mscale", "mscale_all_dim"):
            if getattr(rope, key) is not None:
                params[key] = getattr(rope, key)
    return params


def _hf_rotary(rope: RopeConfig, max_positions: int) -> modeling_llama.LlamaRotaryEmbedding:
    """A fresh transformers rotary module (fresh so dynamic RoPE starts from its initial state)."""
    config = LlamaConfig(
        hidden_size=HEAD_DIM * NUM_Q_HEADS,
        num_attention_heads=NUM_Q_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=max_positions,
        rope_parameters=_hf_rope_parameters(rope),
    )
    return modeling_llama.LlamaRotaryEmbedding(config)


def _hf_apply(
    rope: RopeConfig, max_positions: int, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' result for one sequence of tokens with `positions`, q/k laid out [T, H, D]."""
    cos, sin = _hf_rotary(rope, max_positions)(q, positions[None])
    return modeling_llama.apply_rotary_pos_emb(q, k, cos[0], sin[0], unsqueeze_dim=1)


def _random_qk(num_tokens: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(num_tokens, NUM_Q_HEADS, HEAD_DIM, generator=generator).to(dtype)
    k = torch.randn(num_tokens, NUM_KV_HEADS, HEAD_DIM, generator=generator).to(dtype)
    return q, k


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("num_tokens", [300, 40])
def test_matches_transformers_for_one_sequence(name: str, num_tokens: int) -> None:
    rope, max_positions = CASES[name]
    positions = torch.arange(num_tokens)
    q, k = _random_qk(num_tokens)
    ours = RotaryEmbedding(HEAD_DIM, rope, max_positions)(positions, q, k, torch.full((num_tokens,), num_tokens))
    theirs = _hf_apply(rope, max_positions, positions, q, k)
    assert _max_err(ours[0], theirs[0]) < 1e-5
    assert _max_err(ours[1], theirs[1]) < 1e-5


@pytest.mark.parametrize("name", ["dynamic-2", "dynamic-8"])
def test_dynamic_without_seq_lens_uses_max_position_like_transformers(name: str) -> None:
    rope, max_positions = CASES[name]
    positions = torch.arange(50, 211)
    q, k = _random_qk(positions.numel())
    ours = RotaryEmbedding(HEAD_DIM, rope, max_positions)(positions, q, k)
    theirs = _hf_apply(rope, max_positions, positions, q, k)
    assert _max_err(ours[0], theirs[0]) < 1e-5
    assert _max_err(ours[1], theirs[1]) < 1e-5


@pytest.mark.parametrize("seq_len", [1, 64, MAX_POSITIONS])
def test_dynamic_within_trained_length_equals_default(seq_len: int) -> None:
    dynamic = RotaryEmbedding(HEAD_DIM, RopeConfig(type="dynamic", factor=4.0), MAX_POSITIONS)
    default = RotaryEmbedding(HEAD_DIM, RopeConfig(), MAX_POSITIONS)
    positions = torch.arange(seq_len)
    q, k = _random_qk(seq_len)
    ours = dynamic(positions, q, k, torch.full((seq_len,), seq_len))
    expected = default(positions, q, k)
    assert torch.equal(ours[0], expected[0]) and torch.equal(ours[1], expected[1])


def test_dynamic_beyond_trained_length_differs_from_default() -> None:
    dynamic = RotaryEmbedding(HEAD_DIM, RopeConfig(type="dynamic", factor=4.0), MAX_POSITIONS)
    default = RotaryEmbedding(HEAD_DIM, RopeConfig(), MAX_POSITIONS)
    positions = torch.arange(MAX_POSITIONS + 1)
    seq_lens = torch.full_like(positions, MAX_POSITIONS + 1)
    assert not torch.allclose(dynamic.cos_sin(positions, seq_lens)[0], default.cos_sin(positions)[0])


@pytest.mark.parametrize("name", ["dynamic-2", "dynamic-8", "yarn-4", "llama3-8", "linear-2"])
def test_mixed_batch_equals_each_sequence_alone(name: str) -> None:
    rope, max_positions = CASES[name]
    rotary = RotaryEmbedding(HEAD_DIM, rope, max_positions)
    # A: whole prompt past the trained length; B: a prefill chunk inside it; C: one decode token far out.
    segments = [torch.arange(0, 200), torch.arange(30, 50), torch.tensor([400])]
    seq_lens = torch.tensor([200, 50, 401], dtype=torch.int32)
    query_start_loc = torch.tensor([0, 200, 220, 221], dtype=torch.int32)
    num_padding = 3
    positions = torch.cat([*segments, torch.zeros(num_padding, dtype=torch.int64)])
    q, k = _random_qk(positions.numel())

    batched = rotary(positions, q, k, token_seq_lens(query_start_loc, seq_lens, positions.numel()))
    for index, segment in enumerate(segments):
        rows = slice(int(query_start_loc[index]), int(query_start_loc[index + 1]))
        alone = rotary(segment, q[rows], k[rows], torch.full_like(segment, int(seq_lens[index])))
        # Not bitwise: CPU pow runs SIMD or scalar code depending on the tensor's length (1 ulp apart).
        assert _max_err(batched[0][rows], alone[0]) < 1e-5 and _max_err(batched[1][rows], alone[1]) < 1e-5
        # Each sequence alone is what transformers computes for a batch of just that sequence.
        theirs = _hf_apply(rope, max_positions, segment, q[rows], k[rows])
        assert _max_err(alone[0], theirs[0]) < 1e-5 and _max_err(alone[1], theirs[1]) < 1e-5


@pytest.mark.parametrize("name", ["default", "dynamic-2", "llama3-8", "yarn-mscale"])
def test_bf16_close_to_float32_and_rounds_like_transformers(name: str) -> None:
    rope, max_positions = CASES[name]
    rotary = RotaryEmbedding(HEAD_DIM, rope, max_positions)
    positions = torch.arange(300)
    seq_lens = torch.full_like(positions, 300)
    q, k = _random_qk(300, torch.bfloat16)
    ours = rotary(positions, q, k, seq_lens)
    reference = rotary(positions, q.float(), k.float(), seq_lens)
    theirs = _hf_apply(rope, max_positions, positions, q, k)
    for got, want, hf in zip(ours, reference, theirs, strict=True):
        assert got.dtype == torch.bfloat16
        assert ((got.float() - want).norm() / want.norm()).item() < 1e-2
        # Same bf16 operations as HF (bitwise equal here); allow one bf16 ulp for other CPUs' SIMD paths.
        torch.testing.assert_close(got, hf, rtol=2**-7, atol=1e-3)


def test_token_seq_lens_maps_tokens_to_their_request() -> None:
    query_start_loc = torch.tensor([0, 3, 3, 4, 6], dtype=torch.int32)
    seq_lens = torch.tensor([10, 7, 20, 6], dtype=torch.int32)
    got = token_seq_lens(query_start_loc, seq_lens, num_tokens=8)
    assert got.tolist() == [10, 10, 10, 20, 6, 6, 6, 6]  # the last two are padding


def test_inv_freq_stays_float32_through_dtype_casts() -> None:
    rotary = RotaryEmbedding(HEAD_DIM, CASES["yarn-4"][0], MAX_POSITIONS)
    expected = rotary.inv_freq.clone()
    rotary.to(torch.bfloat16)
    assert rotary.inv_freq.dtype == torch.float32 and torch.equal(rotary.inv_freq, expected)
    assert "inv_freq" not in rotary.state_dict()


def test_kernel_reference_layout_and_dispatch_name() -> None:
    q, k = _random_qk(5)
    angles = torch.rand(5, HEAD_DIM // 2) * 10
    cos = torch.cat([angles.cos()] * 2, dim=-1)
    sin = torch.cat([angles.sin()] * 2, dim=-1)
    q_out, k_out = apply_rotary_ref(q, k, cos, sin)
    half = HEAD_DIM // 2
    # NeoX layout: element i pairs with element i + D/2.
    expected_first = q[..., :half] * cos[:, None, :half] - q[..., half:] * sin[:, None, :half]
    expected_second = q[..., half:] * cos[:, None, :half] + q[..., :half] * sin[:, None, :half]
    assert _max_err(q_out, torch.cat([expected_first, expected_second], dim=-1)) < 1e-6
    assert torch.allclose(q_out.norm(dim=-1), q.norm(dim=-1), atol=1e-5)  # rotations keep the norm
    assert torch.equal(apply_rotary(q, k, cos, sin)[1], k_out)


def test_unsupported_settings_raise() -> None:
    with pytest.raises(NotImplementedError, match="partial_rotary_factor"):
        RotaryEmbedding(HEAD_DIM, RopeConfig(partial_rotary_factor=0.5), MAX_POSITIONS)
    with pytest.raises(NotImplementedError, match="longrope"):
        RotaryEmbedding(HEAD_DIM, dataclasses.replace(RopeConfig(), type="longrope"), MAX_POSITIONS)
    with pytest.raises(ValueError, match="even head_dim"):
        RotaryEmbedding(63, RopeConfig(), MAX_POSITIONS)
