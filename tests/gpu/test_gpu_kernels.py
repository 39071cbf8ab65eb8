"""The compiled Triton kernels against their references at real shapes (Llama-3.1-8B: 32 query heads,
8 KV heads, head_dim 128, 16-token pages, bf16), where CI can only run tiny ones in the interpreter.

The batch builders and tolerances are tests/kernels' own, imported inside each test: importing a
Triton kernel module at collection time would fix its compile mode before tests/kernels/conftest.py
could ask for the interpreter on a CPU.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu

BF16 = torch.bfloat16
HEADS, KV_HEADS, HEAD_DIM, BLOCK = 32, 8, 128, 16


def contexts(n: int, longest: int, seed: int) -> list[int]:
    """n context lengths in [1, longest], page edges (15, 16, 17, ...) among them."""
    edges = [1, 15, 16, 17, 255, 256, 257, longest - 1, longest]
    generator = torch.Generator().manual_seed(seed)
    return (edges + torch.randint(1, longest + 1, (n,), generator=generator).tolist())[:n]


@pytest.mark.parametrize("window", [None, 1024])
@pytest.mark.parametrize("batch, longest", [(64, 4096), (2, 16384)])  # many rows; few long rows (split KV)
def test_decode_attention(batch: int, longest: int, window: int | None) -> None:
    from tests.kernels.test_triton_attention import PAD, check, make_batch

    shapes = [(ctx - 1, 1) for ctx in contexts(batch, longest, seed=batch)] + [PAD, PAD]
    args, max_query_len = make_batch(shapes, HEADS, KV_HEADS, HEAD_DIM, BLOCK, BF16, seed=batch)
    check(args, max_query_len, HEAD_DIM**-0.5, window, BF16)


@pytest.mark.parametrize("window", [None, 1024])
@pytest.mark.parametrize("num_heads, num_kv_heads, head_dim", [(HEADS, KV_HEADS, HEAD_DIM), (6, 2, 64)])
def test_prefill_extend_and_mixed_attention(num_heads: int, num_kv_heads: int, head_dim: int, window) -> None:
    """A 2k prompt, an extend over a 1.5k cached prefix, short prefills, decodes and padding in one batch."""
    from tests.kernels.test_triton_attention import PAD, check, make_batch

    shapes = [(0, 2048), (1500, 512), (0, 333), (4000, 1), (17, 1), PAD, (100, 100), (0, 1)]
    args, max_query_len = make_batch(shapes, num_heads, num_kv_heads, head_dim, BLOCK, BF16, seed=head_dim)
    check(args, max_query_len, head_dim**-0.5, window, BF16)


def test_fused_rotary_and_kv_write() -> None:
    """4096 tokens of q/k/v views of one fused QKV output, shuffled slots across pages, padding."""
    from tests.kernels.test_triton_rotary_kv import assert_close, make_inputs, run_both

    q, k, v, cos, sin, slots, num_slots = make_inputs(4096, HEADS, KV_HEADS, HEAD_DIM, BF16, block_size=BLOCK)
    (q_out, kc, vc), (q_ref, kc_ref, vc_ref) = run_both(q, k, v, cos, sin, slots, num_slots, BF16, block_size=BLOCK)
    assert_close(q_out, q_ref, BF16)
    written = slots[slots >= 0]
    flat = [c.view(num_slots, KV_HEADS, HEAD_DIM) for c in (kc, vc, kc_ref, vc_ref)]
    assert_close(flat[0][written], flat[2][written], BF16)
    assert torch.equal(flat[1][written], flat[3][written])


def test_fused_rotary_with_llama31_angles_matches_transformers() -> None:
    """Real llama3-scaled angles at positions up to 128k, through the production op, against transformers."""
    from transformers import LlamaConfig
    from transformers.models.llama import modeling_llama

    from forgellm import kernels
    from forgellm.hf.config_types import RopeConfig
    from forgellm.layers.rotary import RotaryEmbedding

    params = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
    rope = RopeConfig(type="llama3", theta=500000.0, **params)
    max_positions = 131072
    rotary = RotaryEmbedding(HEAD_DIM, rope, max_positions).to("cuda")
    tokens = 4096
    generator = torch.Generator().manual_seed(0)
    positions = torch.randint(0, max_positions, (tokens,), generator=generator).cuda()
    qkv = torch.randn(tokens, (HEADS + 2 * KV_HEADS) * HEAD_DIM, generator=generator).to("cuda", BF16)
    q, k, v = (x.view(tokens, -1, HEAD_DIM) for x in qkv.split([HEADS * HEAD_DIM, *[KV_HEADS * HEAD_DIM] * 2], -1))
    slots = torch.randperm(tokens, generator=generator).cuda()
    cache_shape = (tokens // BLOCK, BLOCK, KV_HEADS, HEAD_DIM)
    k_cache, v_cache = (torch.zeros(cache_shape, dtype=BF16, device="cuda") for _ in "kv")
    q_out = kernels.rotary_and_write_kv(q, k, v, *rotary.cos_sin(positions), k_cache, v_cache, slots)

    config = LlamaConfig(
        hidden_size=HEADS * HEAD_DIM,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=max_positions,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, **params},
    )
    cos, sin = modeling_llama.LlamaRotaryEmbedding(config).to("cuda")(q, positions[None])
    q_hf, k_hf = modeling_llama.apply_rotary_pos_emb(q, k, cos[0], sin[0], unsqueeze_dim=1)
    k_written = k_cache.view(-1, KV_HEADS, HEAD_DIM)[slots]
    for got, want in ((q_out, q_hf), (k_written, k_hf)):
        err = ((got.double() - want.double()).norm() / want.double().norm()).item()
        assert err < 1e-2, err
        assert (got == want).float().mean().item() > 0.99  # the same bf16 roundings as transformers
    assert torch.equal(v_cache.view(-1, KV_HEADS, HEAD_DIM)[slots], v)


def test_norms_activation_and_kv_write_at_model_shapes() -> None:
    from forgellm.kernels.activation import silu_and_mul_ref
    from forgellm.kernels.kv_cache import write_kv_cache_ref
    from forgellm.kernels.norm import fused_add_rms_norm_ref, rms_norm_ref
    from forgellm.kernels.triton_activation import silu_and_mul_triton
    from forgellm.kernels.triton_kv_cache import write_kv_cache_triton
    from forgellm.kernels.triton_norm import fused_add_rms_norm_triton, rms_norm_triton
    from tests.kernels.test_triton_small_ops import assert_close, randn

    tokens, hidden, intermediate = 4096, 4096, 14336
    x, residual = randn(tokens, hidden, dtype=BF16, seed=1), randn(tokens, hidden, dtype=BF16, seed=2)
    weight = randn(hidden, dtype=BF16, seed=3)
    assert_close(rms_norm_triton(x, weight, 1e-5), rms_norm_ref(x, weight, 1e-5))
    fused = fused_add_rms_norm_triton(x, residual, weight, 1e-5)
    for out, ref in zip(fused, fused_add_rms_norm_ref(x, residual, weight, 1e-5), strict=True):
        assert_close(out, ref)
    gate_up = randn(tokens, 2 * intermediate, dtype=BF16, seed=4)
    assert_close(silu_and_mul_triton(gate_up), silu_and_mul_ref(gate_up))

    kv = randn(tokens, 2 * KV_HEADS * HEAD_DIM, dtype=BF16, seed=5)
    k, v = (t.view(tokens, KV_HEADS, HEAD_DIM) for t in kv.split(KV_HEADS * HEAD_DIM, dim=-1))
    slots = torch.randperm(2 * tokens, generator=torch.Generator().manual_seed(6))[:tokens].cuda()
    slots[::7] = -1
    cache_shape = (2 * tokens // BLOCK, BLOCK, KV_HEADS, HEAD_DIM)
    caches = [torch.full(cache_shape, -7.0, dtype=BF16, device="cuda") for _ in range(4)]
    write_kv_cache_triton(k, v, caches[0], caches[1], slots)
    write_kv_cache_ref(k, v, caches[2], caches[3], slots)
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])


def test_dispatch_sends_cuda_tensors_to_triton() -> None:
    from forgellm import kernels
    from forgellm.kernels.triton_attention import paged_attention_triton
    from forgellm.kernels.triton_norm import rms_norm_triton

    assert kernels.cuda_implementation(kernels.paged_attention) is paged_attention_triton
    x, weight = torch.randn(64, 4096, device="cuda", dtype=BF16), torch.randn(4096, device="cuda", dtype=BF16)
    assert torch.equal(kernels.rms_norm(x, weight, 1e-5), rms_norm_triton(x, weight, 1e-5))
