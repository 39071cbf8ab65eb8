"""FP8 W8A8 GEMM in Triton: y = (x_q * x_scale) @ (w * w_scale)^T with e4m3 tensor-core dots.

Scales that vary along K (per-group activations, block weights) are applied to each K step's
partial product; the others (per token, per tensor, per channel) once, in the epilogue.

Small M (decode) is a weight stream: the tile is "swapped" (weight rows fill the MMA's 64-row side
and the few tokens its narrow side, y^T = W x^T) and K is split across programs until the grid
fills the GPU; the splits' float32 partials are summed by a second small kernel or, given split_k_counters,
by the tile's last split to finish (one launch; both sum in split order, so they agree bit for bit).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from forgellm.kernels.triton_utils import check_split_k_counters, interpreting, next_power_of_2, num_sms


@dataclass(frozen=True)
class Fp8GemmConfig:
    """One tile shape and schedule of the kernel (benchmarks/fp8_gemm_bench.py --sweep tries them)."""

    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    swap_ab: bool = False
    num_warps: int = 4
    num_stages: int = 4


# Tiles for M <= 16 (decode), M <= 64, then large M (block_m 64 up to M = 128). K is split across
# programs while the output tiles alone leave SMs idle: up to SPLIT_K_PROGRAMS_PER_SM per SM for the
# swapped (weight-streaming) tiles, one wave for the large ones.
DECODE_CONFIG = Fp8GemmConfig(block_m=16, block_n=64, block_k=256, swap_ab=True, num_warps=4, num_stages=4)
SMALL_CONFIG = Fp8GemmConfig(block_m=64, block_n=128, block_k=128, swap_ab=True, num_warps=4, num_stages=4)
LARGE_CONFIG = Fp8GemmConfig(block_m=128, block_n=128, block_k=128, num_warps=8, num_stages=3)
SPLIT_K_PROGRAMS_PER_SM = 2
MAX_SPLIT_K = 16
# Tiles of GROUP_M row blocks run together so their weight tiles are reused from L2 (a constexpr: compiled
# kernels may read no other globals).
GROUP_M = tl.constexpr(8)


def pick_config(m: int, n: int, k: int, k_group: int | None, sms: int) -> Fp8GemmConfig:
    """The tile config for an [m, k] x [k, n] product; k_group: the K step must divide it (K-varying scales)."""
    if m <= 16:
        base = DECODE_CONFIG
    elif m <= 64:
        base = replace(SMALL_CONFIG, block_m=max(next_power_of_2(m), 16))
    else:
        base = LARGE_CONFIG if m > 128 else replace(LARGE_CONFIG, block_m=64, num_warps=4)
    block_k = base.block_k
    while k_group is not None and k_group % block_k:
        block_k //= 2
    tiles = triton.cdiv(m, base.block_m) * triton.cdiv(n, base.block_n)
    # Weight streams (swapped tiles) want several programs per SM in flight; big tiles one wave.
    target = SPLIT_K_PROGRAMS_PER_SM * sms if base.swap_ab else sms
    # Split only while each split keeps >= 4 K steps, so the pipeline still has depth.
    split = max(1, min(triton.cdiv(target, tiles), triton.cdiv(k, block_k) // 4, MAX_SPLIT_K))
    return replace(base, block_k=max(block_k, 16), split_k=split)


@triton.jit
def _outer(rows, cols, SWAP_AB: tl.constexpr):
    """rows (per token) x cols (per output channel) laid out like the accumulator."""
    # One return: compiled Triton refuses a return inside an if (the interpreter accepts it).
    if SWAP_AB:
        scale = cols[:, None] * rows[None, :]
    else:
        scale = rows[:, None] * cols[None, :]
    return scale


@triton.jit
def _fp8_gemm_kernel(
    x_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, out_ptr, y_ptr, counter_ptr,
    M, N, K,
    stride_xm, stride_wn, stride_om, stride_os,
    stride_xs, stride_wsn, stride_wsk,
    k_steps_per_split,
    ACT_MODE: tl.constexpr,  # 0 one scale, 1 per token, 2 per token group of K_GROUP
    W_MODE: tl.constexpr,  # 0 one scale, 1 per channel, 2 per (W_BLOCK_N, K_GROUP) block
    K_GROUP: tl.constexpr,
    W_BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SWAP_AB: tl.constexpr,
    EVEN_K: tl.constexpr,
    PARTIAL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BITCAST: tl.constexpr,
    FUSED_REDUCE: tl.constexpr,
):  # fmt: skip
    """One [BLOCK_M, BLOCK_N] output tile over split program_id(1) of K's steps; FUSED_REDUCE: the tile's last
    split to finish sums the partials in out (+ bias) into y (counter_ptr: one per tile, program_id(0))."""
    pid = tl.program_id(0)
    tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * tiles_n)
    first_m = group * GROUP_M
    rows_in_group = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * tiles_n)) % rows_in_group
    pid_n = (pid % (GROUP_M * tiles_n)) // rows_in_group
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m, mask_n = offs_m < M, offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn

    total_steps = tl.cdiv(K, BLOCK_K)
    first = tl.program_id(1) * k_steps_per_split
    last = tl.minimum(first + k_steps_per_split, total_steps)
    acc = tl.zeros((BLOCK_N, BLOCK_M) if SWAP_AB else (BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(first, last):
        k0 = step * BLOCK_K
        if EVEN_K:
            a = tl.load(x_rows + (k0 + offs_k)[None, :], mask=mask_m[:, None], other=0.0)
            b = tl.load(w_rows + (k0 + offs_k)[None, :], mask=mask_n[:, None], other=0.0)
        else:
            mask_k = (k0 + offs_k)[None, :] < K
            a = tl.load(x_rows + (k0 + offs_k)[None, :], mask=mask_m[:, None] & mask_k, other=0.0)
            b = tl.load(w_rows + (k0 + offs_k)[None, :], mask=mask_n[:, None] & mask_k, other=0.0)
        if BITCAST:  # the interpreter cannot mask fp8 loads: they came in as uint8
            a = a.to(tl.float8e4nv, bitcast=True)
            b = b.to(tl.float8e4nv, bitcast=True)
        if ACT_MODE == 2 or W_MODE == 2:
            part = tl.dot(b, tl.trans(a)) if SWAP_AB else tl.dot(a, tl.trans(b))
            sa = tl.full((BLOCK_M,), 1.0, tl.float32)
            sb = tl.full((BLOCK_N,), 1.0, tl.float32)
            if ACT_MODE == 2:
                sa = tl.load(xs_ptr + offs_m * stride_xs + k0 // K_GROUP, mask=mask_m, other=0.0)
            if W_MODE == 2:
                sb = tl.load(ws_ptr + (offs_n // W_BLOCK_N) * stride_wsn + (k0 // K_GROUP) * stride_wsk, mask=mask_n)
            acc += part * _outer(sa, sb, SWAP_AB)
        elif SWAP_AB:
            acc = tl.dot(b, tl.trans(a), acc)
        else:
            acc = tl.dot(a, tl.trans(b), acc)
    if SWAP_AB:
        acc = tl.trans(acc)

    if ACT_MODE == 0:
        acc *= tl.load(xs_ptr)
    elif ACT_MODE == 1:
        acc *= tl.load(xs_ptr + offs_m * stride_xs, mask=mask_m, other=0.0)[:, None]
    if W_MODE == 0:
        acc *= tl.load(ws_ptr)
    elif W_MODE == 1:
        acc *= tl.load(ws_ptr + offs_n * stride_wsn, mask=mask_n, other=0.0)[None, :]
    out = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if PARTIAL:
        tl.store(out + tl.program_id(1).to(tl.int64) * stride_os, acc, mask=mask)
        if FUSED_REDUCE:  # stream-K's fix-up: the tile's last split to finish sums the partials
            tl.debug_barrier()  # every thread's partial store is issued before the count below
            # acq_rel: releases this split's partial; the last split acquires the others' (read .cg: from L2)
            if tl.atomic_add(counter_ptr + pid, 1, sem="acq_rel") == tl.num_programs(1) - 1:
                total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                for i in range(0, tl.num_programs(1)):  # split order, not arrival order: bit for bit the 2-kernel sum
                    total += tl.load(out + i * stride_os, mask=mask, other=0.0, cache_modifier=".cg")
                if HAS_BIAS:
                    total += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
                y = y_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
                tl.store(y, total.to(y_ptr.dtype.element_ty), mask=mask)
                tl.store(counter_ptr + pid, 0)  # back to zero for the next call and CUDA-graph replays: no memset
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _split_k_reduce_kernel(part_ptr, bias_ptr, out_ptr, N, numel, splits, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    """out = sum over splits of the float32 partials [splits, M, N] (+ bias), in out's dtype."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(0, splits):
        acc += tl.load(part_ptr + s * numel + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _modes(x_q: torch.Tensor, x_scale: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor, block):
    """(ACT_MODE, W_MODE) read from the scales' shapes, as forgellm.kernels.fp8_gemm documents them."""
    (m, k), n = x_q.shape, w.shape[0]
    bn, bk = block
    if x_scale.numel() == 1:
        act = 0
    elif x_scale.shape == (m, 1):
        act = 1
    elif x_scale.shape == (m, triton.cdiv(k, bk)):
        act = 2
    else:
        raise ValueError(f"x_scale of shape {tuple(x_scale.shape)} fits no layout of x_q {tuple(x_q.shape)}")
    if w_scale.numel() == 1:
        wmode = 0
    elif w_scale.shape == (n, 1):
        wmode = 1
    elif w_scale.shape == (triton.cdiv(n, bn), triton.cdiv(k, bk)):
        wmode = 2
    else:
        raise ValueError(f"w_scale of shape {tuple(w_scale.shape)} fits no layout of w {tuple(w.shape)}")
    return act, wmode


def fp8_matmul_triton(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
    block: tuple[int, int] = (128, 128),
    config: Fp8GemmConfig | None = None,
    split_k_counters: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton fp8_matmul: same contract as forgellm.kernels.fp8_gemm.fp8_matmul_ref; config overrides the tiles.

    split_k_counters: zeroed int32, one per output tile (triton_utils.split_k_counters); left zero after each call."""
    (m, k), n = x_q.shape, w.shape[0]
    if w.shape[1] != k:
        raise ValueError(f"x_q {tuple(x_q.shape)} and w {tuple(w.shape)} do not share K")
    act, wmode = _modes(x_q, x_scale, w, w_scale, block)
    out = torch.empty((m, n), dtype=out_dtype, device=x_q.device)
    if m == 0 or n == 0:
        return out
    if k == 0:
        return out.zero_() if bias is None else out.copy_(bias.expand(m, n))
    x_q = x_q if x_q.stride(1) == 1 else x_q.contiguous()
    w = w if w.stride(1) == 1 else w.contiguous()
    x_scale, w_scale = x_scale.float().contiguous(), w_scale.float().contiguous()
    k_group = block[1] if 2 in (act, wmode) else None
    cfg = config or pick_config(m, n, k, k_group, num_sms(x_q.device))
    if k_group is not None and k_group % cfg.block_k:
        raise ValueError(f"block_k {cfg.block_k} must divide the scale group {k_group}")
    k_steps = triton.cdiv(k, cfg.block_k)
    per_split = triton.cdiv(k_steps, cfg.split_k)
    splits = triton.cdiv(k_steps, per_split)  # no empty split
    dest = torch.empty((splits, m, n), dtype=torch.float32, device=out.device) if splits > 1 else out
    bitcast = interpreting()
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n), splits)
    # With counters the last split of each tile sums the partials: one launch per GEMM instead of two at small M.
    fused_reduce = splits > 1 and split_k_counters is not None
    if fused_reduce:
        check_split_k_counters(split_k_counters, grid[0], out.device)
    _fp8_gemm_kernel[grid](
        x_q.view(torch.uint8) if bitcast else x_q,
        x_scale,
        w.view(torch.uint8) if bitcast else w,
        w_scale,
        bias if bias is not None else out,
        dest,
        out,
        split_k_counters if fused_reduce else out,
        m, n, k,
        x_q.stride(0), w.stride(0), n, m * n,
        x_scale.stride(0) if x_scale.dim() == 2 else 0,
        w_scale.stride(0) if w_scale.dim() == 2 else 0,
        w_scale.stride(1) if w_scale.dim() == 2 else 0,
        per_split,
        ACT_MODE=act, W_MODE=wmode, K_GROUP=block[1], W_BLOCK_N=block[0],
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SWAP_AB=cfg.swap_ab,
        EVEN_K=k % cfg.block_k == 0, PARTIAL=splits > 1, HAS_BIAS=bias is not None, BITCAST=bitcast,
        FUSED_REDUCE=fused_reduce, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    if splits > 1 and not fused_reduce:
        block_size = 1024
        _split_k_reduce_kernel[(triton.cdiv(m * n, block_size),)](
            dest, bias if bias is not None else out, out, n, m * n, splits,
            HAS_BIAS=bias is not None, BLOCK=block_size, num_warps=4,
        )  # fmt: skip
    return out
