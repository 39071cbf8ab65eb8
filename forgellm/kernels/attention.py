"""Paged attention over block tables: the pure-torch reference.

One function serves prefill (with or without a cached prefix), decode and mixed batches: each
request's queries are its new tokens, its keys are the first `seq_len` tokens of its block table.
The loop over requests is fine for a reference; the Triton version packs them into one launch.
"""

from __future__ import annotations

import torch

from forgellm.kernels.kv_cache import dequantize_kv_ref


def gather_kv(cache: torch.Tensor, block_ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """The first seq_len tokens of one sequence from a [blocks, block_size, H, D] cache."""
    block_size = cache.shape[1]
    num_blocks = (seq_len + block_size - 1) // block_size
    return cache[block_ids[:num_blocks]].flatten(0, 1)[:seq_len]


def paged_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    *,
    max_query_len: int | None = None,
    max_seq_len: int | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """Causal attention of q [T, Hq, D] over cached K/V; returns [T, Hq, D] in q's dtype.

    The queries of request i are rows query_start_loc[i]:query_start_loc[i+1]; they sit at the last
    positions of its seq_lens[i] cached tokens. Grouped-query attention at any Hq/Hkv ratio.
    max_query_len / max_seq_len are the batch's host ints: the Triton version picks its kernel and
    grid from them; the reference ignores them. An fp8 (e4m3) cache is read back as its values times
    k_scale / v_scale (forgellm.kernels.kv_cache); other caches ignore the scales.
    """
    out = torch.empty_like(q)
    num_kv_heads = k_cache.shape[2]
    group = q.shape[1] // num_kv_heads
    starts = query_start_loc.tolist()
    lens = seq_lens.tolist()
    for i, seq_len in enumerate(lens):
        q_i = q[starts[i] : starts[i + 1]]
        num_q = q_i.shape[0]
        if num_q == 0:
            continue
        k = dequantize_kv_ref(gather_kv(k_cache, block_tables[i], seq_len), k_scale)
        v = dequantize_kv_ref(gather_kv(v_cache, block_tables[i], seq_len), v_scale)
        # [Hkv, group*num_q, D] so each KV head serves its group of query heads in one matmul.
        qh = q_i.float().view(num_q, num_kv_heads, group, -1).permute(1, 2, 0, 3)
        scores = torch.einsum("hgqd,khd->hgqk", qh, k) * scale
        q_pos = torch.arange(seq_len - num_q, seq_len, device=q.device)[:, None]
        k_pos = torch.arange(seq_len, device=q.device)[None, :]
        masked = k_pos > q_pos
        if sliding_window is not None:
            masked |= k_pos <= q_pos - sliding_window
        scores.masked_fill_(masked, float("-inf"))
        probs = scores.softmax(dim=-1)
        o = torch.einsum("hgqk,khd->qhgd", probs, v)
        out[starts[i] : starts[i + 1]] = o.reshape(num_q, -1, q.shape[-1]).to(q.dtype)
    return out
