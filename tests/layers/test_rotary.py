"""Rotary embedding as production runs it, against transformers' Llama rotary, for every RoPE type.

Production computes cos/sin once per forward pass (RotaryEmbedding.cos_sin, with each token's
sequence length from ForwardBatch.token_seq_lens for dynamic NTK) and rotates q and k inside the
KV-cache write (kernels.rotary_and_write_kv: the pure-torch reference on CPU tensors, the fused
Triton kernel on CUDA ones). Both are checked here on batches built by the model runner's own
batch builder: the returned q, and the k and v written into the paged cache, must equal what
transformers computes for each sequence alone.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama import modeling_llama

from forgellm import kernels
from forgellm.hf.config_types import RopeConfig
from forgellm.layers.rotary import RotaryEmbedding
from forgellm.worker.forward_batch import ForwardBatch, SequenceChunk, build_forward_batch

HEAD_DIM = 64
NUM_Q_HEADS = 4
NUM_KV_HEADS = 2
MAX_POSITIONS = 128
BLOCK_SIZE = 16
CPU = torch.device("cpu")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where the Triton kernel runs
# "reference": kernels.rotary_and_write_kv on CPU tensors (what a CPU runs); "triton": the fused kernel
# (what a GPU runs; in Triton's interpreter without one, see conftest.py).
IMPLS = ["reference", "triton"]

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


def _random_qkv(num_tokens: int, dtype: torch.dtype = torch.float32, seed: int = 0):
    """q, k, v as strided views of one fused QKV projection output, as the models pass them."""
    generator = torch.Generator().manual_seed(seed)
    sizes = [NUM_Q_HEADS * HEAD_DIM, NUM_KV_HEADS * HEAD_DIM, NUM_KV_HEADS * HEAD_DIM]
    qkv = torch.randn(num_tokens, sum(sizes), generator=generator).to(dtype)
    return tuple(x.view(num_tokens, -1, HEAD_DIM) for x in qkv.split(sizes, dim=-1))


def _batch(segments: list[tuple[int, int]]) -> ForwardBatch:
    """A ForwardBatch (the runner's own builder) of requests computing tokens [start, start + n) each.

    Every request gets its own blocks, handed out in descending order so slots are not the token order.
    """
    chunks, next_block = [], 1000
    for start, n in segments:
        num_blocks = -(-(start + n) // BLOCK_SIZE)
        blocks = list(range(next_block, next_block - num_blocks, -1))
        next_block -= num_blocks
        chunks.append(SequenceChunk([1] * n, start, blocks, [n - 1]))
    return build_forward_batch(chunks, BLOCK_SIZE, CPU)


def _fused_step(impl: str, rotary: RotaryEmbedding, batch: ForwardBatch, q, k, v):
    """One layer's rotary as a forward pass runs it: (q out, k written to the cache, v written), on CPU."""
    # As LlamaForCausalLM.forward: cos/sin once per pass, per-token sequence lengths for dynamic NTK.
    seq_lens = batch.token_seq_lens if rotary.rope.type == "dynamic" else None
    cos, sin = rotary.cos_sin(batch.positions, seq_lens)
    if impl == "reference":
        device, op = CPU, kernels.rotary_and_write_kv
    else:
        pytest.importorskip("triton")
        from forgellm.kernels.triton_rotary_kv import rotary_and_write_kv_triton

        device, op = DEVICE, rotary_and_write_kv_triton
    slots = batch.slot_mapping.to(device)
    num_blocks = int(slots.max()) // BLOCK_SIZE + 1
    caches = [
        torch.full((num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM), float("nan"), dtype=q.dtype, device=device)
        for _ in range(2)
    ]
    args = [x.to(device) for x in (q, k, v, cos, sin)]
    q_out = op(*args, *caches, slots)
    k_written, v_written = (c.view(-1, NUM_KV_HEADS, HEAD_DIM)[slots] for c in caches)
    return q_out.cpu(), k_written.cpu(), v_written.cpu()


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _assert_matches_hf_per_sequence(name, impl, segments, seed=0):
    """Run the batch of `segments` through the fused step; each request's rows equal HF on it alone."""
    rope, max_positions = CASES[name]
    batch = _batch(segments)
    q, k, v = _random_qkv(batch.num_tokens, seed=seed)
    q_out, k_written, v_written = _fused_step(impl, RotaryEmbedding(HEAD_DIM, rope, max_positions), batch, q, k, v)
    assert torch.equal(v_written, v)  # v goes in unrotated
    starts = batch.query_start_loc.tolist()
    for index, (start, n) in enumerate(segments):
        rows = slice(starts[index], starts[index + 1])
        q_hf, k_hf = _hf_apply(rope, max_positions, torch.arange(start, start + n), q[rows], k[rows])
        assert _max_err(q_out[rows], q_hf) < 1e-5, (index, start, n)
        assert _max_err(k_written[rows], k_hf) < 1e-5, (index, start, n)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("num_tokens", [300, 40])
def test_prefill_matches_transformers(name: str, num_tokens: int) -> None:
    """One prompt of 300 tokens (past every trained length) or 40 (inside them), CPU path."""
    _assert_matches_hf_per_sequence(name, "reference", [(0, num_tokens)])


DECODE_POSITIONS = [0, 5, 63, 127, 128, 200, 299, 511]  # each side of every trained length in CASES


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(CASES))
def test_decode_batch_matches_transformers(name: str, impl: str) -> None:
    """A decode step: requests at very different lengths, one token each (dynamic: each its own base)."""
    _assert_matches_hf_per_sequence(name, impl, [(p, 1) for p in DECODE_POSITIONS], seed=1)


@pytest.mark.parametrize(
    "name, impl",
    [(name, "reference") for name in ("dynamic-2", "dynamic-8", "yarn-4", "llama3-8", "linear-2")]
    + [("dynamic-8", "triton")],
)
def test_mixed_batch_matches_each_sequence_alone_in_transformers(name: str, impl: str) -> None:
    """A whole prompt past the trained length, a prefill chunk over a cached prefix inside it, a far decode."""
    _assert_matches_hf_per_sequence(name, impl, [(0, 200), (30, 20), (400, 1)], seed=2)


@pytest.mark.parametrize("impl", IMPLS)
def test_neox_layout_and_frequencies_by_hand(impl: str) -> None:
    """A unit vector in dimension j at position p turns by p * theta^(-2j/D) towards dimension j + D/2."""
    rope, _ = CASES["default"]
    position, j, half = 7, 3, HEAD_DIM // 2
    batch = _batch([(position, 1)])
    q, k, v = (torch.zeros(1, heads, HEAD_DIM) for heads in (NUM_Q_HEADS, NUM_KV_HEADS, NUM_KV_HEADS))
    q[0, 1, j] = 1.0  # head 1 of q, dimension j (first half)
    k[0, 0, half + j] = 1.0  # head 0 of k, dimension j + D/2 (second half)
    q_out, k_written, _ = _fused_step(impl, RotaryEmbedding(HEAD_DIM, rope, MAX_POSITIONS), batch, q, k, v)
    angle = position * rope.theta ** (-2 * j / HEAD_DIM)
    expected_q = torch.zeros_like(q)
    expected_q[0, 1, j], expected_q[0, 1, half + j] = math.cos(angle), math.sin(angle)
    expected_k = torch.zeros_like(k)
    expected_k[0, 0, j], expected_k[0, 0, half + j] = -math.sin(angle), math.cos(angle)
    assert _max_err(q_out, expected_q) < 1e-6 and _max_err(k_written, expected_k) < 1e-6


@pytest.mark.parametrize("name", ["default", "dynamic-2", "llama3-8", "yarn-mscale"])
def test_bf16_rounds_like_transformers(name: str) -> None:
    """bf16 q/k/v into a bf16 cache (CPU path): HF's bf16 result to one ulp, HF's float32 result to 1%."""
    rope, max_positions = CASES[name]
    batch = _batch([(0, 300)])
    q, k, v = _random_qkv(300, torch.bfloat16, seed=3)
    q_out, k_written, v_written = _fused_step(
        "reference", RotaryEmbedding(HEAD_DIM, rope, max_positions), batch, q, k, v
    )
    positions = torch.arange(300)
    hf_bf16 = _hf_apply(rope, max_positions, positions, q, k)
    hf_fp32 = _hf_apply(rope, max_positions, positions, q.float(), k.float())
    assert torch.equal(v_written, v)
    for got, same_dtype, exact in zip((q_out, k_written), hf_bf16, hf_fp32, strict=True):
        assert got.dtype == torch.bfloat16
        # Same bf16 operations as HF (bitwise equal here); allow one bf16 ulp for other CPUs' SIMD paths.
        torch.testing.assert_close(got, same_dtype, rtol=2**-7, atol=1e-3)
        assert ((got.float() - exact).norm() / exact.norm()).item() < 1e-2


def test_token_seq_lens_map_tokens_to_their_request() -> None:
    """What dynamic RoPE reads: each token's sequence length after the step."""
    batch = _batch([(0, 3), (9, 1), (4, 2), (0, 1)])
    assert batch.token_seq_lens.tolist() == [3, 3, 3, 10, 6, 6, 1]


@pytest.mark.parametrize("name", list(CASES))
def test_inv_freq_equals_transformers_and_stays_float32_through_casts(name: str) -> None:
    rope, max_positions = CASES[name]
    rotary = RotaryEmbedding(HEAD_DIM, rope, max_positions)
    hf = _hf_rotary(rope, max_positions)
    assert torch.equal(rotary.inv_freq, hf.inv_freq)
    assert rotary.attention_scaling == pytest.approx(hf.attention_scaling, rel=1e-12)
    rotary.to(torch.bfloat16)
    assert rotary.inv_freq.dtype == torch.float32 and torch.equal(rotary.inv_freq, hf.inv_freq)
    assert "inv_freq" not in rotary.state_dict()


def test_unsupported_settings_raise() -> None:
    with pytest.raises(NotImplementedError, match="partial_rotary_factor"):
        RotaryEmbedding(HEAD_DIM, RopeConfig(partial_rotary_factor=0.5), MAX_POSITIONS)
    with pytest.raises(NotImplementedError, match="longrope"):
        RotaryEmbedding(HEAD_DIM, dataclasses.replace(RopeConfig(), type="longrope"), MAX_POSITIONS)
    with pytest.raises(ValueError, match="even head_dim"):
        RotaryEmbedding(63, RopeConfig(), MAX_POSITIONS)
    dynamic = RotaryEmbedding(HEAD_DIM, CASES["dynamic-2"][0], MAX_POSITIONS)
    with pytest.raises(ValueError, match="seq_lens_of_tokens"):
        dynamic.cos_sin(torch.arange(4))
