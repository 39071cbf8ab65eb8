"""Weight-only quantized GEMM in Triton: unpack, subtract the zero and scale inside the K loop.

Layout: forgellm.kernels.int_weight_gemm. A program owns a [BLOCK_N, BLOCK_M] tile of y^T (the weight is
the MMA's wide operand, so a few decode rows fill it) and a slice of K; with split_k > 1 slices write float32
partials that a second kernel sums or, given split_k_counters, the tile's last slice to finish (one launch: no
host sync or memset, CUDA-graph safe; both sum in slice order, so they agree bit for bit). Each packed
word is loaded once, its element j handled in pass j (k = word * pack + j: x is read with stride pack).
M = 1 skips tl.dot (FMAs); large M dequantizes to x's dtype and calls torch.mm (cuBLAS).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from forgellm.kernels.int_weight_gemm import check_int_weight_args, check_x_width
from forgellm.kernels.triton_utils import check_split_k_counters, interpreting, num_sms

# Above this many rows, dequantize + torch.mm beats the fused kernel (to be set from the benchmark).
DEQUANT_MM_MIN_M = 128


class GemmConfig(NamedTuple):
    """Tile sizes and launch shape of the fused kernel; block_m == 1 selects the FMA (no tl.dot) path."""

    block_m: int
    block_n: int
    block_k: int
    split_k: int
    num_warps: int
    num_stages: int


@triton.jit
def _e2m1_quarter(bits, sign):
    """A quarter of an e2m1 value from bits = magnitude bits (e1 e0 b) at 22-24 | 0x3E000000 and its sign at 31.

    bits is the float 2**(e-3) * (1 + b/2) (exponent 124 + e: an OR, fused with the mask), a quarter of the
    value for e >= 1; for e = 0 the quarter subnormal b/8 is 2f - 1/4; the min picks the right one."""
    f = bits.to(tl.float32, bitcast=True)
    return (tl.minimum(2.0 * f - 0.25, f).to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)


@triton.jit
def _element(q, J: tl.constexpr, BITS: tl.constexpr, E2M1: tl.constexpr, magic, zero: tl.constexpr):
    """Element J of every packed word of q, exact in float32: a quarter of the e2m1 value, or code - zero.

    Instruction issue bounds the M = 1 loop, so: fields inside the float32 mantissa are masked in place,
    the others shifted by 12 (one shift serves them all); with magic = 0x4B000000 in a register
    `(q & field) | magic` is one LOP3 giving the float 2**23 + code * 2**off, and one FFMA rescales it."""
    if E2M1:
        shl: tl.constexpr = 22 - J * BITS  # moves the code's magnitude bits to 22-24
        word = q << shl if shl >= 0 else q >> -shl
        sign = q << (28 - J * BITS) if J < 7 else q
        return _e2m1_quarter((word & 0x01C00000) | (magic - 0x0D000000), sign & -0x80000000)  # magic: see above
    inside: tl.constexpr = J * BITS + BITS <= 23
    off: tl.constexpr = J * BITS if inside else J * BITS - 12
    word = q if inside else q >> 12
    f = ((word & (((1 << BITS) - 1) << off)) | magic).to(tl.float32, bitcast=True)
    return f * (1.0 / (1 << off)) - (8388608.0 / (1 << off) + zero)


@triton.jit
def _gemm_kernel(
    x_ptr, q_ptr, s_ptr, z_ptr, perm_ptr, out_ptr, y_ptr, counter_ptr,
    M, N, K, stride_xm, stride_xk, blocks_per_split, magic,
    BITS: tl.constexpr, GROUP: tl.constexpr, E2M1: tl.constexpr, HAS_ZEROS: tl.constexpr,
    SYM_ZERO: tl.constexpr, HAS_PERM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, DOT_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr, FUSED_REDUCE: tl.constexpr,
):  # fmt: skip
    """out[pid_k] (or y) tile (pid_n, pid_m): the sum over this program's K slice, stored as y[m, n];
    FUSED_REDUCE: the tile's last slice to finish then sums out[0..splits) into y (counter_ptr: one per tile)."""
    PACK: tl.constexpr = 32 // BITS
    BKP: tl.constexpr = BLOCK_K // PACK  # packed rows per block
    SCALE_ROW: tl.constexpr = GROUP % BLOCK_K == 0  # a block lies in one group: one scale per column
    pid_n, pid_m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    kb_end = tl.minimum((pid_k + 1) * blocks_per_split, tl.cdiv(K, BLOCK_K))
    acc = tl.zeros((BLOCK_N, BKP if BLOCK_M == 1 else BLOCK_M), tl.float32)  # FMA path: reduce over BKP at the end
    for kb in range(pid_k * blocks_per_split, kb_end):
        kp = kb * BKP + tl.arange(0, BKP)
        kp_mask = kp < K // PACK
        tile_mask = n_mask[:, None] & kp_mask[None, :]
        q = tl.load(q_ptr + kp[None, :] * N + offs_n[:, None], mask=tile_mask, other=0)
        if SCALE_ROW:  # [BLOCK_N, 1]: one scale (and zero) per column for the whole block
            g_off, g_mask = ((kb * BLOCK_K // GROUP) * N + offs_n)[:, None], n_mask[:, None]
        else:
            g_off, g_mask = (kp * PACK // GROUP)[None, :] * N + offs_n[:, None], tile_mask
        s = tl.load(s_ptr + g_off, mask=g_mask, other=0.0).to(tl.float32)
        if HAS_ZEROS:
            z = tl.load(z_ptr + g_off, mask=g_mask, other=0.0).to(tl.float32)
        if E2M1:
            s *= 4.0  # _element gives quarter values
        if BLOCK_M == 1:
            # Zeros per column: sum_k (c_k - z) x_k = sum_k c_k x_k - z * sum_k x_k, one multiply per word.
            tq, xs = tl.zeros((BLOCK_N, BKP), tl.float32), tl.zeros((BKP,), tl.float32)
            for j in tl.static_range(PACK):
                k = kp * PACK + j
                if HAS_PERM:
                    k = tl.load(perm_ptr + k, mask=kp_mask, other=0)
                xj = tl.load(x_ptr + pid_m * stride_xm + k * stride_xk, mask=kp_mask, other=0.0).to(tl.float32)
                tq += _element(q, j, BITS, E2M1, magic, 0.0 if HAS_ZEROS else SYM_ZERO) * xj[None, :]
                if HAS_ZEROS:
                    xs += xj
            if HAS_ZEROS:
                tq -= z * xs[None, :]
            acc += s * tq
        else:
            blk = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
            for j in tl.static_range(PACK):
                k = kp * PACK + j
                if HAS_PERM:
                    k = tl.load(perm_ptr + k, mask=kp_mask, other=0)
                x_ptrs = x_ptr + offs_m[None, :] * stride_xm + k[:, None] * stride_xk
                xj = tl.load(x_ptrs, mask=kp_mask[:, None] & m_mask[None, :], other=0.0)
                w = _element(q, j, BITS, E2M1, magic, 0.0 if HAS_ZEROS else SYM_ZERO)  # exact in bf16 too
                if HAS_ZEROS:
                    w -= z
                if not SCALE_ROW:
                    w = w * s
                w = w.to(x_ptr.dtype.element_ty)
                if DOT_FP32:  # the interpreter's bf16/fp16 dot is wrong (REFERENCE.md section 7)
                    w, xj = w.to(tl.float32), xj.to(tl.float32)
                blk = tl.dot(w, xj, blk, input_precision=DOT_PRECISION)
            acc += blk * s if SCALE_ROW else blk
    res = tl.sum(acc, axis=1)[:, None] if BLOCK_M == 1 else acc
    tile, mask = offs_m[None, :] * N + offs_n[:, None], n_mask[:, None] & m_mask[None, :]
    tl.store(out_ptr + pid_k * M * N + tile, res.to(out_ptr.dtype.element_ty), mask=mask)
    if FUSED_REDUCE:  # stream-K's fix-up: the tile's last slice to finish sums the partials
        tl.debug_barrier()  # every thread's partial store is issued before the count below
        counter = counter_ptr + pid_m * tl.num_programs(0) + pid_n
        # acq_rel: releases this slice's partial; the last slice acquires the others' (and reads them .cg: from L2)
        if tl.atomic_add(counter, 1, sem="acq_rel") == tl.num_programs(2) - 1:
            total = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
            for i in range(tl.num_programs(2)):  # slice order, not arrival order: as _sum_splits_kernel, bit for bit
                total += tl.load(out_ptr + i * M * N + tile, mask=mask, other=0.0, cache_modifier=".cg")
            tl.store(y_ptr + tile, total.to(y_ptr.dtype.element_ty), mask=mask)
            tl.store(counter, 0)  # back to zero for the next call and CUDA-graph replays: no memset per call


@triton.jit
def _sum_splits_kernel(part_ptr, out_ptr, total, splits, BLOCK: tl.constexpr):
    """out[i] = sum over s of part[s, i], in out's dtype."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    acc = tl.zeros((BLOCK,), tl.float32)
    for s in range(splits):
        acc += tl.load(part_ptr + s * total + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dequant_kernel(
    q_ptr, s_ptr, z_ptr, w_ptr, N, K,
    BITS: tl.constexpr, GROUP: tl.constexpr, E2M1: tl.constexpr, HAS_ZEROS: tl.constexpr,
    SYM_ZERO: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """w[n, k] = (q - z) * s (or e2m1(q) * s), rounded to s's dtype then w's, for one [BLOCK_N, BLOCK_K] tile."""
    PACK: tl.constexpr = 32 // BITS
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (offs_n < N)[:, None] & (offs_k < K)[None, :]
    # Each word is loaded pack times (from L1): the stores along K stay contiguous, which matters more here.
    q = tl.load(q_ptr + (offs_k // PACK)[None, :] * N + offs_n[:, None], mask=mask, other=0)
    c = (q >> ((offs_k % PACK) * BITS)[None, :]) & ((1 << BITS) - 1)
    g_off = (offs_k // GROUP)[None, :] * N + offs_n[:, None]
    s = tl.load(s_ptr + g_off, mask=mask, other=0.0)
    if E2M1:
        v = 4.0 * _e2m1_quarter(((c & 7) << 22) | 0x3E000000, (c & 8) << 28)
    elif HAS_ZEROS:
        v = c.to(tl.float32) - tl.load(z_ptr + g_off, mask=mask, other=0.0).to(tl.float32)
    else:
        v = c.to(tl.float32) - SYM_ZERO
    w = (v * s.to(tl.float32)).to(s.dtype).to(w_ptr.dtype.element_ty)
    tl.store(w_ptr + offs_n[:, None] * K + offs_k[None, :], w, mask=mask)


# Per M bucket (largest M): block_m, block_n, packed rows per block, num_warps, num_stages, programs per SM
# that split-K aims for. M = 1: 16 KB of packed weight per block, 4 programs per SM (125 registers) in flight.
TILES = [(1, (1, 128, 32, 4, 3, 4)), (16, (16, 128, 32, 4, 3, 4)), (32, (32, 128, 16, 4, 3, 2)),
         (64, (64, 128, 16, 8, 3, 2)), (None, (64, 128, 16, 8, 3, 1))]  # fmt: skip


def pick_config(m: int, n: int, k: int, bits: int, group_size: int, device: torch.device) -> GemmConfig:
    """Tiles from TILES by M; split-K up to programs-per-SM x SMs programs (it matters when tiles are few)."""
    if interpreting():  # tiny tiles: the interpreter runs every program serially
        bm, bn, bkp, warps, stages, per_sm = (1 if m == 1 else 16), 32, 16, 1, 1, 2
    else:
        bm, bn, bkp, warps, stages, per_sm = next(t for top, t in TILES if top is None or m <= top)
    pack = 32 // bits
    words = group_size // pack  # a power of two unless an act-order shard padded its groups (then: scale per element)
    if bm > 1 and words >= 16 and words & (words - 1) == 0:  # tl.dot path: a block in one group scales once per column
        bkp = min(bkp, group_size // pack)  # (at M = 1 the larger block wins: less loop overhead per element)
    bk = bkp * pack
    tiles = triton.cdiv(n, bn) * triton.cdiv(m, bm)
    split = max(1, min(triton.cdiv(per_sm * num_sms(device), tiles), triton.cdiv(k, bk), 32))
    return GemmConfig(bm, bn, bk, split, warps, stages)


def _weight_args(qweight, scales, zeros, bits: int, value_type: str) -> tuple[tuple, dict]:
    """Contiguous (qweight, scales, zeros or a stand-in pointer) and the constexprs both kernels take."""
    e2m1 = value_type == "e2m1"
    consts = dict(BITS=bits, E2M1=e2m1, HAS_ZEROS=zeros is not None, SYM_ZERO=0.0 if e2m1 else 2.0 ** (bits - 1))
    return (qweight.contiguous(), scales.contiguous(), (scales if zeros is None else zeros).contiguous()), consts


def int_weight_gemm_triton(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    bits: int,
    group_size: int,
    value_type: str = "int",
    perm: torch.Tensor | None = None,
    config: GemmConfig | None = None,
    split_k_counters: torch.Tensor | None = None,
) -> torch.Tensor:
    """The fused kernel (split-K at small M, tiled at large M); config overrides pick_config.

    split_k_counters: zeroed int32, one per output tile (triton_utils.split_k_counters); left zero after each call."""
    k, n = check_int_weight_args(qweight, scales, zeros, bits, group_size, value_type, perm)
    width = check_x_width(x, k, perm)
    x2, m = x.reshape(-1, width), x.numel() // max(width, 1)
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return y.view(*x.shape[:-1], n)
    cfg = config or pick_config(m, n, k, bits, group_size, x.device)
    if cfg.block_k // (32 // bits) < 16 or 1 < cfg.block_m < 16:
        raise ValueError(f"bad config {cfg}: tl.dot needs block_k / pack >= 16 and block_m 1 (no dot) or >= 16")
    num_kb = triton.cdiv(k, cfg.block_k)
    per_split = triton.cdiv(num_kb, max(1, min(cfg.split_k, num_kb)))
    split = triton.cdiv(num_kb, per_split)  # no empty slices
    out = y if split == 1 else torch.empty(split, m, n, dtype=torch.float32, device=x.device)
    (qweight, scales, zeros_arg), consts = _weight_args(qweight, scales, zeros, bits, value_type)
    grid = (triton.cdiv(n, cfg.block_n), triton.cdiv(m, cfg.block_m), split)
    # With counters the last slice of each tile sums the partials: one launch per GEMM instead of two at small M.
    fused_reduce = split > 1 and split_k_counters is not None
    if fused_reduce:
        check_split_k_counters(split_k_counters, grid[0] * grid[1], x.device)
    _gemm_kernel[grid](
        x2, qweight, scales, zeros_arg, qweight if perm is None else perm, out, y,
        split_k_counters if fused_reduce else qweight,
        m, n, k, x2.stride(0), x2.stride(1), per_split, 0x4B000000,
        GROUP=group_size, HAS_PERM=perm is not None, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k, DOT_FP32=interpreting(), DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        FUSED_REDUCE=fused_reduce, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **consts,
    )  # fmt: skip
    if split > 1 and not fused_reduce:  # 256 outputs per program: enough programs even for N = 4096 at M = 1
        _sum_splits_kernel[(triton.cdiv(m * n, 256),)](out, y, m * n, split, BLOCK=256, num_warps=2)
    return y.view(*x.shape[:-1], n)


def dequantize_int_weight_triton(
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    bits: int,
    group_size: int,
    value_type: str = "int",
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """W [N, K] in stored K order, in `dtype` (default scales' dtype); rounded like dequantize_int_weight."""
    k, n = check_int_weight_args(qweight, scales, zeros, bits, group_size, value_type)
    w = torch.empty(n, k, dtype=dtype or scales.dtype, device=qweight.device)
    if n == 0:
        return w
    bn, bk = (16, 32) if interpreting() else (32, 128)
    tensors, consts = _weight_args(qweight, scales, zeros, bits, value_type)
    _dequant_kernel[(triton.cdiv(n, bn), triton.cdiv(k, bk))](
        *tensors, w, n, k, GROUP=group_size, BLOCK_N=bn, BLOCK_K=bk, num_warps=4, **consts
    )  # fmt: skip
    return w


def int_weight_dequant_mm_triton(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    bits: int,
    group_size: int,
    value_type: str = "int",
    perm: torch.Tensor | None = None,
) -> torch.Tensor:
    """Large-M path: dequantize to x's dtype, gather x by perm, then one cuBLAS GEMM."""
    k, _ = check_int_weight_args(qweight, scales, zeros, bits, group_size, value_type, perm)
    check_x_width(x, k, perm)
    w = dequantize_int_weight_triton(qweight, scales, zeros, bits, group_size, value_type, dtype=x.dtype)
    if perm is not None:
        x = x.index_select(-1, perm.long())
    return x @ w.t()


def int_weight_matmul_triton(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    bits: int,
    group_size: int,
    value_type: str = "int",
    perm: torch.Tensor | None = None,
    split_k_counters: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton int_weight_matmul (contract of int_weight_matmul_ref): fused kernel up to DEQUANT_MM_MIN_M rows."""
    if use_dequant_mm(x.numel() // max(x.shape[-1], 1)):
        return int_weight_dequant_mm_triton(x, qweight, scales, zeros, bits, group_size, value_type, perm)
    return int_weight_gemm_triton(
        x, qweight, scales, zeros, bits, group_size, value_type, perm, split_k_counters=split_k_counters
    )


def use_dequant_mm(m: int) -> bool:
    """Whether a GEMM of m rows goes to dequantize + torch.mm rather than the fused kernel."""
    return m > DEQUANT_MM_MIN_M
