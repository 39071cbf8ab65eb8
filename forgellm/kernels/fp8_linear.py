"""FP8 W8A8 linear layer: quantize the activation, then run the GEMM that is fastest for its M.

On CUDA: Triton quantization, then `fp8_gemm_backend` picks torch._scaled_mm (cuBLASLt / CUTLASS)
or forgellm's Triton GEMM. CPU tensors (and FORGELLM_KERNELS=reference) take the references.
Nothing here syncs with the host, so a CUDA graph can capture fp8_linear.
"""

from __future__ import annotations

import os

import torch

from forgellm.kernels.fp8_gemm import fp8_matmul_ref
from forgellm.kernels.fp8_quant import (
    FP8_DTYPE,
    WEIGHT_STRATEGIES,
    quantize_fp8_per_token_group_ref,
    quantize_fp8_per_token_ref,
    quantize_fp8_static_ref,
)

ACT_STRATEGIES = ("token", "group", "static")
# torch._scaled_mm runs from these M up (per-tensor scales on both sides / any per-row scale); below
# them the Triton GEMM, whose swapped, split-K tiles stream the weight faster at decode sizes. None:
# Triton at every M. Set from benchmarks/fp8_gemm_bench.py on the target GPU (its "crossover" lines).
SCALED_MM_MIN_M_TENSORWISE: int | None = 64
SCALED_MM_MIN_M_ROWWISE: int | None = 64
# Block weights with per-group activations (128x128 / 1x128 scales) in _scaled_mm: torch builds on
# cuBLASLt >= 12.9 have it. None keeps them on Triton until the benchmark shows where cuBLASLt wins.
SCALED_MM_MIN_M_BLOCKWISE: int | None = None
# Some torch builds want M % 16 == 0 in _scaled_mm; rows are zero-padded up to this multiple.
SCALED_MM_M_MULTIPLE = 1
# cuBLASLt's fast accumulation (fewer float32 promotions of the fp8 sums): faster, less precise.
SCALED_MM_FAST_ACCUM = False
_REFERENCE_ONLY = os.environ.get("FORGELLM_KERNELS") == "reference"  # read once, like forgellm.kernels


def fp8_gemm_backend(
    m: int,
    n: int,
    k: int,
    weight_strategy: str,
    act_strategy: str,
    out_dtype: torch.dtype,
    has_bias: bool,
    block: tuple[int, int] = (128, 128),
) -> str:
    """The GEMM for a CUDA fp8 linear: "scaled_mm" where _scaled_mm can run and M is large enough, else "triton".

    _scaled_mm needs K and N multiples of 16, gives per-row (rowwise) and block scaling in bf16 only,
    blocks only as 128x128 weight blocks with 1x128 activation groups, and no bias with float32 out.
    """
    if k % 16 or n % 16:
        return "triton"
    if weight_strategy == "block" or act_strategy == "group":
        blockwise = weight_strategy == "block" and act_strategy == "group" and tuple(block) == (128, 128)
        if not blockwise or out_dtype != torch.bfloat16 or has_bias:
            return "triton"
        threshold = SCALED_MM_MIN_M_BLOCKWISE
    else:
        rowwise = weight_strategy == "channel" or act_strategy == "token"
        if (rowwise and out_dtype != torch.bfloat16) or (has_bias and out_dtype == torch.float32):
            return "triton"
        threshold = SCALED_MM_MIN_M_ROWWISE if rowwise else SCALED_MM_MIN_M_TENSORWISE
    return "scaled_mm" if threshold is not None and m >= threshold else "triton"


def scaled_mm_fp8(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """fp8_matmul through torch._scaled_mm: one or per-token x scales with one or per-channel w scales, or
    (bf16 only) 1x128 group x scales with 128x128 block w scales."""
    m, n = x_q.shape[0], w.shape[0]
    blockwise = w_scale.dim() == 2 and w_scale.numel() > 1 and w_scale.shape != (n, 1)
    if blockwise:
        scale_a, scale_b = x_scale.float(), w_scale.float().t()  # [M, K/128]; [K/128, N/128] as w.t()'s
    elif x_scale.numel() == 1 and w_scale.numel() == 1:
        scale_a, scale_b = x_scale.float().reshape(()), w_scale.float().reshape(())
    else:  # rowwise: [M, 1] and [1, N], both contiguous; a single scale is broadcast (a tiny copy)
        scale_a = x_scale.float().reshape(-1, 1).expand(m, 1).contiguous()
        scale_b = w_scale.float().reshape(1, -1).expand(1, n).contiguous()
    rows = -(-m // SCALED_MM_M_MULTIPLE) * SCALED_MM_M_MULTIPLE
    if rows != m:
        padded = torch.zeros((rows, x_q.shape[1]), dtype=torch.uint8, device=x_q.device).view(FP8_DTYPE)
        padded[:m] = x_q
        x_q = padded
        if scale_a.dim() == 2:
            scale_a = torch.cat([scale_a, scale_a.new_ones(rows - m, scale_a.shape[1])])
    if blockwise:  # cuBLASLt reads 1x128 scales M-major (column-major [M, K/128])
        scale_a = scale_a.t().contiguous().t()
    y = torch._scaled_mm(
        x_q,
        w.t(),  # column-major [K, N]: the layout cuBLASLt's fp8 kernels take
        scale_a=scale_a,
        scale_b=scale_b,
        bias=None if bias is None else bias.to(out_dtype),
        out_dtype=out_dtype,
        use_fast_accum=SCALED_MM_FAST_ACCUM,
    )
    return y[:m] if rows != m else y


def _check(x: torch.Tensor, w: torch.Tensor, weight_strategy: str, act_strategy: str, input_scale) -> None:
    """Refuse unknown strategies and mismatched shapes before anything launches."""
    if weight_strategy not in WEIGHT_STRATEGIES:
        raise ValueError(f"weight_strategy must be one of {WEIGHT_STRATEGIES}, got {weight_strategy!r}")
    if act_strategy not in ACT_STRATEGIES:
        raise ValueError(f"act_strategy must be one of {ACT_STRATEGIES}, got {act_strategy!r}")
    if act_strategy == "static" and input_scale is None:
        raise ValueError('act_strategy "static" needs the checkpoint\'s input_scale')
    if w.dim() != 2 or w.dtype != FP8_DTYPE or x.shape[-1] != w.shape[1]:
        raise ValueError(f"w must be float8_e4m3fn [N, K={x.shape[-1]}], got {w.dtype} {tuple(w.shape)}")


def fp8_linear_ref(
    x: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    *,
    input_scale: torch.Tensor | None = None,
    weight_strategy: str,
    act_strategy: str,
    bias: torch.Tensor | None = None,
    block: tuple[int, int] = (128, 128),
) -> torch.Tensor:
    """fp8_linear with the reference quantizers and matmul (any device): y [..., N] in x's dtype."""
    _check(x, w, weight_strategy, act_strategy, input_scale)
    x2 = x.reshape(-1, x.shape[-1])
    if act_strategy == "token":
        x_q, x_scale = quantize_fp8_per_token_ref(x2)
    elif act_strategy == "group":
        x_q, x_scale = quantize_fp8_per_token_group_ref(x2, block[1])
    else:
        x_q, x_scale = quantize_fp8_static_ref(x2, input_scale)
    y = fp8_matmul_ref(x_q, x_scale, w, w_scale, x.dtype, bias, block)
    return y.view(*x.shape[:-1], w.shape[0])


def fp8_linear(
    x: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    *,
    input_scale: torch.Tensor | None = None,
    weight_strategy: str,
    act_strategy: str,
    bias: torch.Tensor | None = None,
    block: tuple[int, int] = (128, 128),
    split_k_counters: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = quantize(x) @ dequantize(w)^T (+ bias) for x [..., K], w [N, K] e4m3: [..., N] in x's dtype.

    act_strategy "token" / "group" (group of block[1]) quantizes x dynamically, "static" with input_scale.
    split_k_counters: the layer's tile counters for the Triton GEMM's in-kernel split-K sum (CUDA only).
    """
    args = dict(input_scale=input_scale, weight_strategy=weight_strategy, act_strategy=act_strategy, bias=bias)
    if not x.is_cuda or _REFERENCE_ONLY:
        return fp8_linear_ref(x, w, w_scale, block=block, **args)
    return _fp8_linear_cuda(x, w, w_scale, block=block, split_k_counters=split_k_counters, **args)


def _fp8_linear_cuda(
    x, w, w_scale, *, input_scale, weight_strategy, act_strategy, bias, block, split_k_counters=None
) -> torch.Tensor:
    """fp8_linear through the package's dispatched ops and the backend choice (CPU tensors: their references)."""
    _check(x, w, weight_strategy, act_strategy, input_scale)
    # The package's dispatched ops (Triton on CUDA, with its import errors); imported here because the
    # package imports this module.
    from forgellm import kernels

    x2 = x.reshape(-1, x.shape[-1])
    if act_strategy == "token":
        x_q, x_scale = kernels.quantize_fp8_per_token(x2)
    elif act_strategy == "group":
        x_q, x_scale = kernels.quantize_fp8_per_token_group(x2, block[1])
    else:
        x_q, x_scale = kernels.quantize_fp8_static(x2, input_scale)
    m, (n, k) = x2.shape[0], w.shape
    backend = fp8_gemm_backend(m, n, k, weight_strategy, act_strategy, x.dtype, bias is not None, block)
    if backend == "scaled_mm":
        y = scaled_mm_fp8(x_q, x_scale, w, w_scale, x.dtype, bias)
    else:
        y = kernels.fp8_matmul(x_q, x_scale, w, w_scale, x.dtype, bias, block, split_k_counters=split_k_counters)
    return y.view(*x.shape[:-1], n)
