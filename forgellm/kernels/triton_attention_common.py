"""Pieces shared by the Triton paged-attention kernels: a KV tile gathered through the block
table, and one step of the online softmax. Scores are kept in the log2 domain (exp2 is cheaper).

An fp8 (e4m3) cache comes in as a uint8 view (forgellm.kernels.triton_kv_cache) and its tiles are
bitcast to e4m3 after loading; the dot converts them to q's dtype (or float32) losslessly, e4m3 being
a subset of both. The scales are not applied per element: k_scale is folded into the softmax scale
and v_scale into the final normalisation, which is exact and costs nothing per tile.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def table_block_ids(table_row_ptr, offs_n, valid_n, BLOCK_SIZE: tl.constexpr):
    """The cache block holding each token offs_n [BLOCK_N] of one sequence (0 where not valid_n), int64."""
    return tl.load(table_row_ptr + offs_n // BLOCK_SIZE, mask=valid_n, other=0).to(tl.int64)


@triton.jit
def load_kv_tiles(
    k_cache_ptr,
    v_cache_ptr,
    block_ids,
    offs_n,
    valid_n,
    kv_head,
    offs_d,
    mask_d,
    stride_block,
    stride_slot,
    stride_head,
    BLOCK_SIZE: tl.constexpr,
    KV_FP8: tl.constexpr,
):
    """K and V tiles [BLOCK_N, D_PAD] of tokens offs_n, one KV head (both caches share strides); invalid rows read 0.

    KV_FP8: the caches are uint8 views of e4m3 caches and the tiles come back as (unscaled) e4m3.
    """
    rows = block_ids * stride_block + (offs_n % BLOCK_SIZE) * stride_slot + kv_head * stride_head
    offsets = rows[:, None] + offs_d[None, :]
    mask = valid_n[:, None] & mask_d[None, :]
    if KV_FP8:
        k = tl.load(k_cache_ptr + offsets, mask=mask, other=0).to(tl.float8e4nv, bitcast=True)
        v = tl.load(v_cache_ptr + offsets, mask=mask, other=0).to(tl.float8e4nv, bitcast=True)
    else:
        k = tl.load(k_cache_ptr + offsets, mask=mask, other=0.0)
        v = tl.load(v_cache_ptr + offsets, mask=mask, other=0.0)
    return k, v


@triton.jit
def softmax_step(q, k, v, m_i, l_i, acc, allowed, scale_log2, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """Fold one KV tile into the running (max, sum, acc) of each query row; `allowed` masks scores.

    Rows whose every score so far is masked keep max = -inf; the max is replaced by 0 in the
    exponentials so they produce 0 instead of NaN (sliding windows and padding rows need this).
    """
    if DOT_FP32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    else:
        k = k.to(q.dtype)
        v = v.to(q.dtype)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
    s = tl.where(allowed, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = tl.dot(p.to(v.dtype), v, acc=acc * alpha[:, None], input_precision=PRECISION)
    return m_new, l_i, acc
