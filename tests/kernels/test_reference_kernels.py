"""The pure-torch reference kernels against plain dense formulations (the Triton versions are later
checked against these references, so these must be right first)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from forgellm.kernels.activation import silu_and_mul_ref
from forgellm.kernels.attention import paged_attention_ref
from forgellm.kernels.kv_cache import write_kv_cache_ref
from forgellm.kernels.norm import fused_add_rms_norm_ref, rms_norm_ref


def dense_attention(q, k, v, scale, sliding_window=None):
    """q [Tq, Hq, D] at the last Tq of Tk positions; k/v [Tk, Hkv, D]; causal (+ window), GQA by repeat."""
    tq, tk = q.shape[0], k.shape[0]
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    q_pos = torch.arange(tk - tq, tk)[:, None]
    k_pos = torch.arange(tk)[None, :]
    allowed = k_pos <= q_pos
    if sliding_window is not None:
        allowed &= k_pos > q_pos - sliding_window
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=allowed, scale=scale
    )
    return out.transpose(0, 1)


@pytest.mark.parametrize("num_heads, num_kv_heads", [(4, 4), (4, 2), (8, 2), (6, 1)])
@pytest.mark.parametrize("sliding_window", [None, 5])
def test_paged_attention_matches_dense(num_heads, num_kv_heads, sliding_window):
    """A mixed batch: a fresh prefill, an extend over a cached prefix, and decodes at block edges."""
    torch.manual_seed(num_heads * 10 + num_kv_heads)
    block_size, head_dim, num_blocks = 4, 12, 64
    # (tokens already cached, new tokens): prefill, extend, decode at a block boundary, odd decode
    shapes = [(0, 7), (9, 5), (8, 1), (12, 1), (2, 3)]
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim)
    v_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim)
    free = torch.randperm(num_blocks).tolist()  # scattered, out-of-order blocks
    qs, tables, seq_lens, starts, refs = [], [], [], [0], []
    for cached, new in shapes:
        total = cached + new
        blocks = [free.pop() for _ in range(-(-total // block_size))]
        k_seq = torch.randn(total, num_kv_heads, head_dim)
        v_seq = torch.randn(total, num_kv_heads, head_dim)
        for p in range(total):
            k_cache[blocks[p // block_size], p % block_size] = k_seq[p]
            v_cache[blocks[p // block_size], p % block_size] = v_seq[p]
        q = torch.randn(new, num_heads, head_dim)
        refs.append(dense_attention(q, k_seq, v_seq, 0.3, sliding_window))
        qs.append(q)
        tables.append(blocks + [0] * (8 - len(blocks)))
        seq_lens.append(total)
        starts.append(starts[-1] + new)
    out = paged_attention_ref(
        torch.cat(qs),
        k_cache,
        v_cache,
        torch.tensor(tables, dtype=torch.int32),
        torch.tensor(starts, dtype=torch.int32),
        torch.tensor(seq_lens, dtype=torch.int32),
        0.3,
        sliding_window,
    )
    torch.testing.assert_close(out, torch.cat(refs), atol=1e-5, rtol=1e-5)


def test_write_kv_cache_skips_padding_slots():
    k_cache = torch.full((3, 4, 2, 5), -7.0)
    v_cache = torch.full((3, 4, 2, 5), -7.0)
    k, v = torch.randn(4, 2, 5), torch.randn(4, 2, 5)
    slots = torch.tensor([9, -1, 0, 3])
    write_kv_cache_ref(k, v, k_cache, v_cache, slots)
    flat_k, flat_v = k_cache.view(-1, 2, 5), v_cache.view(-1, 2, 5)
    for i, slot in enumerate(slots.tolist()):
        if slot >= 0:
            assert torch.equal(flat_k[slot], k[i]) and torch.equal(flat_v[slot], v[i])
    untouched = [s for s in range(12) if s not in (9, 0, 3)]
    assert bool((flat_k[untouched] == -7.0).all()) and bool((flat_v[untouched] == -7.0).all())


def test_rms_norm_and_fused_add():
    x, residual, weight = torch.randn(5, 33), torch.randn(5, 33), torch.randn(33)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight
    torch.testing.assert_close(rms_norm_ref(x, weight, 1e-6), expected)
    normed, new_residual = fused_add_rms_norm_ref(x, residual, weight, 1e-6)
    torch.testing.assert_close(new_residual, x + residual)
    torch.testing.assert_close(normed, rms_norm_ref(x + residual, weight, 1e-6))


def test_silu_and_mul():
    x = torch.randn(3, 2 * 7)
    torch.testing.assert_close(silu_and_mul_ref(x), F.silu(x[:, :7]) * x[:, 7:])
