"""paged_attention in Triton: picks the decode (split-KV) or the varlen prefill kernel from host ints."""

from __future__ import annotations

import torch

from forgellm.kernels.triton_decode_attention import DecodeConfig, choose_num_splits, decode_attention
from forgellm.kernels.triton_prefill_attention import PrefillConfig, prefill_attention
from forgellm.kernels.triton_utils import interpreting, num_sms

# Small tiles under the CPU interpreter, which runs every program serially.
_INTERPRET_DECODE = DecodeConfig(block_n=16, min_chunk=16, max_splits=4, waves=1, num_warps=1, num_stages=1)
_INTERPRET_PREFILL = PrefillConfig(block_m=16, block_n=16, num_warps=1, num_stages=1)
# Up to this many (sequence, KV head) programs, smaller tiles with 2 warps stream faster (more
# programs in flight per SM): +17% at batch 64 x 2k context, +1-2% at batch 1 and 16 x 8k; from
# batch 256 on the default tile is as fast or faster (benchmarks/decode_waves_sweep.py, H200).
_SMALL_TILE_MAX_PROGRAMS = 1024
_SMALL_TILE_DECODE = DecodeConfig(block_n=32, num_warps=2, num_stages=3)


def paged_attention_triton(
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
    decode_config: DecodeConfig | None = None,
    prefill_config: PrefillConfig | None = None,
) -> torch.Tensor:
    """Same contract as forgellm.kernels.attention.paged_attention_ref; returns [T, Hq, D] in q's dtype.

    max_query_len (a host int) selects the kernel; pass it, or it is read back from the GPU (a host
    sync, not allowed inside CUDA-graph capture). max_seq_len is accepted for symmetry and unused:
    split sizing happens on the GPU so a captured graph serves every length. k_scale / v_scale (fp8
    caches only) are plain floats, constants of a captured graph.
    """
    del max_seq_len
    if q.shape[1] % k_cache.shape[2]:
        raise ValueError(f"{q.shape[1]} query heads are not a multiple of {k_cache.shape[2]} KV heads")
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k_cache.stride(-1) != 1 or k_cache.stride() != v_cache.stride():
        # The kernels address K and V with one set of offsets.
        raise ValueError("K and V caches must share strides and be contiguous in head_dim")
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    batch = seq_lens.shape[0]
    if q.shape[0] == 0 or batch == 0:
        return out
    if max_query_len is None:
        max_query_len = int((query_start_loc[1:] - query_start_loc[:-1]).max())
    interp = interpreting()
    if max_query_len <= 1:
        cfg = decode_config or (_INTERPRET_DECODE if interp else _default_decode_config(batch, k_cache.shape[2]))
        splits = choose_num_splits(batch, k_cache.shape[2], num_sms(q.device), cfg)
        decode_attention(
            q,
            k_cache,
            v_cache,
            block_tables,
            query_start_loc,
            seq_lens,
            out,
            scale,
            sliding_window,
            splits,
            cfg,
            interp,
            k_scale=k_scale,
            v_scale=v_scale,
        )
    else:
        pcfg = prefill_config or (_INTERPRET_PREFILL if interp else PrefillConfig())
        prefill_attention(
            q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, out, scale, sliding_window, max_query_len,
            pcfg, interp, k_scale=k_scale, v_scale=v_scale,
        )  # fmt: skip
    return out


def _default_decode_config(batch: int, num_kv_heads: int) -> DecodeConfig:
    """The tuned decode tile for this launch shape (shape only, so a captured graph stays valid)."""
    return _SMALL_TILE_DECODE if batch * num_kv_heads <= _SMALL_TILE_MAX_PROGRAMS else DecodeConfig()
