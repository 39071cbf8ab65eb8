"""RMSNorm and fused residual-add + RMSNorm in Triton: one program per row, float32 math inside.

The roundings of the reference are reproduced on purpose (normalized value cast to x's dtype before
the weight multiply, residual sum rounded to its dtype), so bf16 results match it bit for bit up to
the order of the sum of squares.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from forgellm.kernels.triton_utils import as_rows, next_power_of_2


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    out_ptr,
    new_res_ptr,
    inner,
    stride_xa,
    stride_xb,
    stride_ra,
    stride_rb,
    n_cols,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Normalize row r of x (plus residual when given); rows are (r // inner, r % inner) of a 3-D view."""
    row = tl.program_id(0).to(tl.int64)
    a, b = row // inner, row % inner
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + a * stride_xa + b * stride_xb + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + a * stride_ra + b * stride_rb + cols, mask=mask, other=0.0)
        # The sum is rounded to the residual stream's dtype, as `x + residual` is in torch.
        x = (x.to(tl.float32) + r.to(tl.float32)).to(new_res_ptr.dtype.element_ty)
        tl.store(new_res_ptr + row * n_cols + cols, x, mask=mask)
    xf = x.to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(xf * xf, axis=0) / n_cols + eps)
    normed = (xf * inv_rms).to(x.dtype).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * n_cols + cols, (w * normed).to(out_ptr.dtype.element_ty), mask=mask)


def _launch(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float):
    """Run the kernel over every row of x; returns (normed, new_residual or None), both contiguous."""
    n = x.shape[-1]
    x3 = as_rows(x)
    rows = x3.shape[0] * x3.shape[1]
    out = torch.empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    new_res, r3 = None, x3
    if residual is not None:
        r3 = as_rows(residual)
        new_res = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, residual.dtype), device=x.device)
    if rows == 0:
        return out, new_res
    block = next_power_of_2(n)
    # One warp per 256 elements keeps 8 fp32 values per thread; capped at 16 warps.
    num_warps = min(max(block // 256, 1), 16)
    _rms_norm_kernel[(rows,)](
        x3,
        r3,
        weight,
        out,
        new_res if new_res is not None else out,
        x3.shape[1],
        x3.stride(0),
        x3.stride(1),
        r3.stride(0),
        r3.stride(1),
        n,
        eps,
        HAS_RESIDUAL=residual is not None,
        BLOCK=block,
        num_warps=num_warps,
    )
    return out, new_res


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Triton rms_norm: same contract as forgellm.kernels.norm.rms_norm_ref."""
    return _launch(x, None, weight, eps)[0]


def fused_add_rms_norm_triton(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton fused_add_rms_norm: returns (rms_norm(x + residual), x + residual) like the reference."""
    if residual.shape != x.shape:
        raise ValueError(f"residual {tuple(residual.shape)} must match x {tuple(x.shape)}")
    normed, new_res = _launch(x, residual, weight, eps)
    assert new_res is not None
    return normed, new_res
