"""Decode paged attention (one query per request) in Triton: split-KV flash-decoding.

Programs are (request, KV head, split). The query heads sharing a KV head are packed into the M
dimension of one tl.dot. How many splits a request really uses is computed on the GPU from its
seq_len, so the grid and the partial buffers depend only on the batch size: CUDA-graph safe, no
host synchronisation. A second kernel merges the splits by their log-sum-exp.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from forgellm.kernels.triton_attention_common import load_kv_tiles, softmax_step, table_block_ids
from forgellm.kernels.triton_kv_cache import kernel_caches


@dataclass(frozen=True)
class DecodeConfig:
    """Tile and launch parameters of the split kernel (tuned on the H200, see KERNELS_NOTES.md)."""

    block_n: int = 64  # KV tokens per loop iteration
    min_chunk: int = 64  # fewest tokens a split takes, so short sequences are not over-split
    max_splits: int = 32
    waves: int = 2  # aim for this many programs per SM when choosing the split count
    num_warps: int = 4
    num_stages: int = 3
    prefetch_ids: bool = True  # load the next tile's block ids one iteration ahead
    # fp8 caches with bf16 q: run the dots in fp16 (q clamped to ±65504). e4m3 -> f16 is one conversion
    # per pair of values, e4m3 -> bf16 one more per value, and decode is short of conversion throughput.
    # Off until benchmarks/fp8_kv_attention_bench.py shows it pays on the H200.
    fp8_f16_dot: bool = False


@triton.jit
def split_span(seq_len, window, num_splits, BLOCK_N: tl.constexpr, MIN_CHUNK: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """First visible KV position, tokens per split and splits in use for a sequence (same in both kernels)."""
    kv_lo = 0
    if HAS_WINDOW:
        kv_lo = tl.maximum(seq_len - window, 0)
    span = seq_len - kv_lo
    chunk = tl.cdiv(tl.cdiv(span, num_splits), BLOCK_N) * BLOCK_N
    chunk = tl.maximum(chunk, MIN_CHUNK)
    return kv_lo, chunk, tl.cdiv(span, chunk)


@triton.jit
def _decode_split_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, query_start_loc_ptr, seq_lens_ptr,
    out_ptr, part_out_ptr, part_lse_ptr,
    scale_log2, v_scale, window,
    stride_qt, stride_qh, stride_kb, stride_ks, stride_kh,
    stride_bt, stride_ot, stride_oh,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, MIN_CHUNK: tl.constexpr,
    HAS_WINDOW: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr, PREFETCH_IDS: tl.constexpr,
    KV_FP8: tl.constexpr, F16_DOT: tl.constexpr,
):  # fmt: skip
    """Attend the packed query heads of (request, kv_head) over one split of its KV."""
    req = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + req)
    q_row = tl.load(query_start_loc_ptr + req)
    num_queries = tl.load(query_start_loc_ptr + req + 1) - q_row
    has_query = num_queries > 0
    num_splits = tl.num_programs(2)  # a runtime value: one compiled kernel serves every split count
    kv_lo, chunk, used = split_span(seq_len, window, num_splits, BLOCK_N, MIN_CHUNK, HAS_WINDOW)
    if SPLIT:
        # Splits past the ones this sequence needs (and padding requests) write nothing.
        if (split >= used) | (num_queries <= 0):
            return
    start = kv_lo + split * chunk
    end = tl.minimum(start + chunk, seq_len)

    g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    mask_d = offs_d < HEAD_DIM
    heads = kv_head * GROUP + g
    q_mask = (g < GROUP)[:, None] & mask_d[None, :] & has_query
    q = tl.load(
        q_ptr + q_row.to(tl.int64) * stride_qt + heads[:, None] * stride_qh + offs_d[None, :], mask=q_mask, other=0.0
    )
    if DOT_FP32:
        q = q.to(tl.float32)
    elif F16_DOT:
        # softmax_step converts the K/V tiles (and p) to q's dtype: fp16 here.
        q = tl.minimum(tl.maximum(q.to(tl.float32), -65504.0), 65504.0).to(tl.float16)

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM_PAD], tl.float32)
    table_row = block_tables_ptr + req.to(tl.int64) * stride_bt
    tile = tl.arange(0, BLOCK_N)
    block_ids = table_block_ids(table_row, start + tile, start + tile < end, BLOCK_SIZE)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tile
        valid_n = offs_n < end
        if PREFETCH_IDS:
            # Read the next tile's block ids now, so K/V addresses never wait on a table load.
            ids = block_ids
            block_ids = table_block_ids(table_row, offs_n + BLOCK_N, offs_n + BLOCK_N < end, BLOCK_SIZE)
        else:
            ids = table_block_ids(table_row, offs_n, valid_n, BLOCK_SIZE)
        k, v = load_kv_tiles(
            k_cache_ptr, v_cache_ptr, ids, offs_n, valid_n, kv_head, offs_d, mask_d, stride_kb, stride_ks, stride_kh,
            BLOCK_SIZE, KV_FP8,
        )  # fmt: skip
        m_i, l_i, acc = softmax_step(q, k, v, m_i, l_i, acc, valid_n[None, :], scale_log2, DOT_FP32, PRECISION)

    # Empty rows (seq_len 0: CUDA-graph padding) have l = 0 and produce zeros.
    if KV_FP8:
        out = acc * (v_scale / tl.where(l_i > 0, l_i, 1.0))[:, None]  # the V tiles were unscaled e4m3
    else:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    if not SPLIT:
        o_ptrs = out_ptr + q_row.to(tl.int64) * stride_ot + heads[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=q_mask)
    else:
        # Partials are [B, Hq, num_splits, HEAD_DIM_PAD] and [B, Hq, num_splits], float32.
        part_row = (req * (tl.num_programs(1) * GROUP) + heads).to(tl.int64) * num_splits + split
        tl.store(part_out_ptr + part_row[:, None] * HEAD_DIM_PAD + offs_d[None, :], out, mask=q_mask)
        lse = tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
        tl.store(part_lse_ptr + part_row, lse, mask=g < GROUP)


@triton.jit
def _decode_reduce_kernel(
    out_ptr, part_out_ptr, part_lse_ptr, query_start_loc_ptr, seq_lens_ptr, window, num_splits, stride_ot, stride_oh,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
    SPLITS_PAD: tl.constexpr, MIN_CHUNK: tl.constexpr, HAS_WINDOW: tl.constexpr,
):  # fmt: skip
    """Merge the used splits of (request, query head) weighted by exp2(lse - max lse)."""
    req = tl.program_id(0)
    head = tl.program_id(1)
    q_row = tl.load(query_start_loc_ptr + req)
    if tl.load(query_start_loc_ptr + req + 1) <= q_row:
        return
    seq_len = tl.load(seq_lens_ptr + req)
    _, _, used = split_span(seq_len, window, num_splits, BLOCK_N, MIN_CHUNK, HAS_WINDOW)
    s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    base = (req * tl.num_programs(1) + head).to(tl.int64) * num_splits
    lse = tl.load(part_lse_ptr + base + s, mask=s < used, other=float("-inf"))
    m = tl.max(lse, axis=0)
    w = tl.exp2(lse - tl.where(m == float("-inf"), 0.0, m))
    part = tl.load(
        part_out_ptr + (base + s)[:, None] * HEAD_DIM_PAD + offs_d[None, :], mask=(s < used)[:, None], other=0.0
    )
    total = tl.sum(w, axis=0)
    out = tl.sum(part * w[:, None], axis=0) / tl.where(total > 0, total, 1.0)
    o_ptrs = out_ptr + q_row.to(tl.int64) * stride_ot + head * stride_oh + offs_d
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=offs_d < HEAD_DIM)


def choose_num_splits(batch: int, num_kv_heads: int, sms: int, cfg: DecodeConfig) -> int:
    """Splits per sequence from the launch shape only (never from lengths, so graphs stay valid)."""
    programs = max(batch * num_kv_heads, 1)
    return max(1, min(cfg.max_splits, triton.cdiv(cfg.waves * sms, programs)))


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    out: torch.Tensor,
    scale: float,
    sliding_window: int | None,
    num_splits: int,
    cfg: DecodeConfig,
    dot_fp32: bool,
    *,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """Launch split + reduce (or the split kernel alone when num_splits == 1) writing into `out`.

    With fp8 caches, k_scale rides in the softmax scale and v_scale in the final normalisation.
    """
    k_cache, v_cache, fp8 = kernel_caches(k_cache, v_cache)
    batch, num_kv_heads, head_dim = seq_lens.shape[0], k_cache.shape[2], q.shape[-1]
    group = q.shape[1] // num_kv_heads
    # tl.dot needs M, N, K >= 16: pad the packed heads, the head dim and the KV tile.
    group_pad = max(16, triton.next_power_of_2(group))
    head_dim_pad = max(16, triton.next_power_of_2(head_dim))
    block_n = max(16, cfg.block_n)
    if num_splits > 1:
        part_out = torch.empty((batch, q.shape[1], num_splits, head_dim_pad), dtype=torch.float32, device=q.device)
        part_lse = torch.empty((batch, q.shape[1], num_splits), dtype=torch.float32, device=q.device)
    else:
        part_out = part_lse = out  # unused by the kernel when not SPLIT
    window = sliding_window or 0
    common = dict(BLOCK_N=block_n, MIN_CHUNK=max(cfg.min_chunk, block_n))
    _decode_split_kernel[(batch, num_kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, out, part_out, part_lse,
        scale * (k_scale if fp8 else 1.0) * 1.4426950408889634, v_scale if fp8 else 1.0, window,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        GROUP=group, GROUP_PAD=group_pad, HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad, BLOCK_SIZE=k_cache.shape[1],
        SPLIT=num_splits > 1, HAS_WINDOW=sliding_window is not None, DOT_FP32=dot_fp32, PREFETCH_IDS=cfg.prefetch_ids,
        KV_FP8=fp8, F16_DOT=fp8 and cfg.fp8_f16_dot and q.dtype == torch.bfloat16,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **common,
    )  # fmt: skip
    if num_splits > 1:
        _decode_reduce_kernel[(batch, q.shape[1])](
            out, part_out, part_lse, query_start_loc, seq_lens, window, num_splits, out.stride(0), out.stride(1),
            # Padded to the configured maximum so every split count shares one compiled reduce kernel.
            HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad, HAS_WINDOW=sliding_window is not None,
            SPLITS_PAD=triton.next_power_of_2(max(cfg.max_splits, num_splits)),
            num_warps=4 if head_dim_pad >= 128 else 1, **common,
        )  # fmt: skip
