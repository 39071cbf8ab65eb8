"""Prefill / extend / mixed-batch paged attention in Triton: varlen flash attention over the block table.

Programs are (query block, request, KV head); a program's M rows are BLOCK_Q query tokens times
the GROUP query heads that share the KV head. Keys come from the paged cache (the new tokens were
written there first), so a cached prefix and the new tokens are one loop: unmasked tiles wholly
before the block's first query, then causally masked tiles. The grid uses host ints only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from forgellm.kernels.triton_attention_common import load_kv_tiles, softmax_step, table_block_ids
from forgellm.kernels.triton_kv_cache import kernel_caches


@dataclass(frozen=True)
class PrefillConfig:
    """Tile and launch parameters (M rows = query tokens x packed heads)."""

    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2


@triton.jit
def _prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, query_start_loc_ptr, seq_lens_ptr, out_ptr,
    scale_log2, v_scale, window,
    stride_qt, stride_qh, stride_kb, stride_ks, stride_kh,
    stride_bt, stride_ot, stride_oh,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_WINDOW: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr, KV_FP8: tl.constexpr,
):  # fmt: skip
    """Attend BLOCK_Q query tokens x GROUP heads of one request over their visible cached keys."""
    q_block = tl.program_id(0)
    req = tl.program_id(1)
    kv_head = tl.program_id(2)
    q_start = tl.load(query_start_loc_ptr + req)
    q_len = tl.load(query_start_loc_ptr + req + 1) - q_start
    first = q_block * BLOCK_Q
    if first >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + req)
    prefix = seq_len - q_len  # the queries sit at the last q_len positions

    BLOCK_M: tl.constexpr = BLOCK_Q * GROUP_PAD
    rows = tl.arange(0, BLOCK_M)
    tok = first + rows // GROUP_PAD
    g = rows % GROUP_PAD
    row_ok = (tok < q_len) & (g < GROUP)
    q_pos = prefix + tok
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    mask_d = offs_d < HEAD_DIM
    heads = kv_head * GROUP + g
    q_off = (q_start + tok).to(tl.int64) * stride_qt + heads * stride_qh
    q_mask = row_ok[:, None] & mask_d[None, :]
    q = tl.load(q_ptr + q_off[:, None] + offs_d[None, :], mask=q_mask, other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)

    first_pos = prefix + first
    last_pos = prefix + tl.minimum(first + BLOCK_Q, q_len) - 1
    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(first_pos - window + 1, 0)
    # Tiles ending at or before first_pos are visible to every row (no causal mask needed).
    mid = lo + tl.maximum(first_pos + 1 - lo, 0) // BLOCK_N * BLOCK_N
    hi = last_pos + 1

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)
    table_row = block_tables_ptr + req.to(tl.int64) * stride_bt
    for n0 in range(lo, mid, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        all_n = offs_n >= 0  # every key of these tiles is in range
        ids = table_block_ids(table_row, offs_n, all_n, BLOCK_SIZE)
        k, v = load_kv_tiles(
            k_cache_ptr, v_cache_ptr, ids, offs_n, all_n, kv_head, offs_d, mask_d, stride_kb, stride_ks, stride_kh,
            BLOCK_SIZE, KV_FP8,
        )  # fmt: skip
        if HAS_WINDOW:
            allowed = offs_n[None, :] > q_pos[:, None] - window
        else:
            allowed = all_n[None, :]
        m_i, l_i, acc = softmax_step(q, k, v, m_i, l_i, acc, allowed, scale_log2, DOT_FP32, PRECISION)
    for n0 in range(mid, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        valid_n = offs_n < hi
        ids = table_block_ids(table_row, offs_n, valid_n, BLOCK_SIZE)
        k, v = load_kv_tiles(
            k_cache_ptr, v_cache_ptr, ids, offs_n, valid_n, kv_head, offs_d, mask_d, stride_kb, stride_ks, stride_kh,
            BLOCK_SIZE, KV_FP8,
        )  # fmt: skip
        allowed = valid_n[None, :] & (offs_n[None, :] <= q_pos[:, None])
        if HAS_WINDOW:
            allowed = allowed & (offs_n[None, :] > q_pos[:, None] - window)
        m_i, l_i, acc = softmax_step(q, k, v, m_i, l_i, acc, allowed, scale_log2, DOT_FP32, PRECISION)

    if KV_FP8:
        out = acc * (v_scale / tl.where(l_i > 0, l_i, 1.0))[:, None]  # the V tiles were unscaled e4m3
    else:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    o_off = (q_start + tok).to(tl.int64) * stride_ot + heads * stride_oh
    tl.store(out_ptr + o_off[:, None] + offs_d[None, :], out.to(out_ptr.dtype.element_ty), mask=q_mask)


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    out: torch.Tensor,
    scale: float,
    sliding_window: int | None,
    max_query_len: int,
    cfg: PrefillConfig,
    dot_fp32: bool,
    *,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """Launch the varlen kernel over cdiv(max_query_len, BLOCK_Q) x B x Hkv programs, writing `out`.

    With fp8 caches, k_scale rides in the softmax scale and v_scale in the final normalisation.
    """
    k_cache, v_cache, fp8 = kernel_caches(k_cache, v_cache)
    batch, num_kv_heads, head_dim = seq_lens.shape[0], k_cache.shape[2], q.shape[-1]
    group = q.shape[1] // num_kv_heads
    group_pad = triton.next_power_of_2(group)
    head_dim_pad = max(16, triton.next_power_of_2(head_dim))
    # At least 16 rows for tl.dot; GROUP_PAD x BLOCK_Q rows in all.
    block_m = max(cfg.block_m, 16, group_pad)
    block_q = block_m // group_pad
    grid = (triton.cdiv(max_query_len, block_q), batch, num_kv_heads)
    _prefill_kernel[grid](
        q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, out,
        scale * (k_scale if fp8 else 1.0) * 1.4426950408889634, v_scale if fp8 else 1.0, sliding_window or 0,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        GROUP=group, GROUP_PAD=group_pad, HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad, BLOCK_SIZE=k_cache.shape[1],
        BLOCK_Q=block_q, BLOCK_N=max(16, cfg.block_n), HAS_WINDOW=sliding_window is not None, DOT_FP32=dot_fp32,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32", KV_FP8=fp8,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
