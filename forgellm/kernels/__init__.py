"""Kernels: each op is a readable pure-torch reference plus, where it pays, a Triton version.

`dispatch` picks per call: CUDA tensors go to the fast version when one exists, everything else to
the reference. FORGELLM_KERNELS=reference (read when this package is imported) makes every op the
reference itself, CUDA tensors included. Tests compare the two. The Triton versions live in
forgellm/kernels/triton_*.py as `<op>_triton`; tests call those directly, on CPU tensors under
TRITON_INTERPRET=1 (tests/kernels/conftest.py sets it).

Triton is imported only when a CUDA tensor first needs a kernel, so CPU-only installs need no
Triton. On a GPU a Triton that cannot be imported is an error that says so, never a silent
fallback to the (much slower, and not CUDA-graph-safe) reference.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from forgellm.kernels.activation import silu_and_mul_ref
from forgellm.kernels.attention import paged_attention_ref
from forgellm.kernels.fp8_gemm import fp8_matmul_ref
from forgellm.kernels.fp8_linear import fp8_linear
from forgellm.kernels.fp8_quant import (
    quantize_fp8_per_token_group_ref,
    quantize_fp8_per_token_ref,
    quantize_fp8_static_ref,
)
from forgellm.kernels.int_weight_gemm import int_weight_matmul_ref
from forgellm.kernels.kv_cache import write_kv_cache_ref
from forgellm.kernels.norm import fused_add_rms_norm_ref, rms_norm_ref
from forgellm.kernels.rotary import apply_rotary_fp32_ref, apply_rotary_ref
from forgellm.kernels.rotary_kv import rotary_and_write_kv_ref


def dispatch(reference: Callable[..., Any], fast: Callable[..., Any] | None = None) -> Callable[..., Any]:
    """Return an op that runs `fast` on CUDA tensors and `reference` on the rest.

    Without a fast version, or under FORGELLM_KERNELS=reference, the op is `reference` itself.
    """
    if fast is None or os.environ.get("FORGELLM_KERNELS") == "reference":
        return reference

    def op(x: Any, *args: Any, **kwargs: Any) -> Any:
        if x.is_cuda:
            return fast(x, *args, **kwargs)
        return reference(x, *args, **kwargs)

    op.__name__ = reference.__name__.removesuffix("_ref")
    op.__doc__ = reference.__doc__
    op.reference = reference  # type: ignore[attr-defined]
    op.fast = fast  # type: ignore[attr-defined]
    return op


def cuda_implementation(op: Callable[..., Any]) -> Callable[..., Any]:
    """The function `op` runs on CUDA tensors: its Triton kernel (imported now, raising the ImportError
    of `triton_op` if Triton is broken), or its reference (no fast version, or FORGELLM_KERNELS=reference)."""
    fast = getattr(op, "fast", None)
    if fast is None:
        return op
    resolve = getattr(fast, "resolve", None)
    return resolve() if resolve is not None else fast


def triton_op(module: str, name: str) -> Callable[..., Any]:
    """A stand-in for forgellm.kernels.<module>.<name> that imports it on first call.

    Importing late keeps Triton out of CPU-only processes and lets tests set TRITON_INTERPRET
    before the kernels are decorated. If the import fails, every call raises an ImportError that
    names the cause and the two ways out (repair Triton, or FORGELLM_KERNELS=reference).
    """
    resolved: list[Callable[..., Any]] = []  # filled once; local to this closure, not global state

    def resolve() -> Callable[..., Any]:
        if not resolved:
            path = f"forgellm.kernels.{module}"
            try:
                kernel = getattr(importlib.import_module(path), name)
            except Exception as exc:  # a broken Triton fails in many ways (ImportError, RuntimeError, ...)
                raise ImportError(
                    f"forgellm's Triton kernel {name} ({path}) could not be imported: {type(exc).__name__}: "
                    f"{exc}. CUDA tensors run forgellm's Triton kernels, so Triton must import: install or "
                    "repair it (the version your torch build expects, e.g. `pip install triton`), or set "
                    "FORGELLM_KERNELS=reference to run the slow pure-torch reference kernels (no CUDA graphs)."
                ) from exc
            resolved.append(kernel)
        return resolved[0]

    def op(*args: Any, **kwargs: Any) -> Any:
        return resolve()(*args, **kwargs)

    op.__name__ = name
    op.resolve = resolve  # type: ignore[attr-defined]
    return op


rms_norm = dispatch(rms_norm_ref, triton_op("triton_norm", "rms_norm_triton"))
fused_add_rms_norm = dispatch(fused_add_rms_norm_ref, triton_op("triton_norm", "fused_add_rms_norm_triton"))
silu_and_mul = dispatch(silu_and_mul_ref, triton_op("triton_activation", "silu_and_mul_triton"))
apply_rotary = dispatch(apply_rotary_ref, triton_op("triton_rotary", "apply_rotary_triton"))
apply_rotary_fp32 = dispatch(apply_rotary_fp32_ref, triton_op("triton_rotary", "apply_rotary_fp32_triton"))
write_kv_cache = dispatch(write_kv_cache_ref, triton_op("triton_kv_cache", "write_kv_cache_triton"))
rotary_and_write_kv = dispatch(rotary_and_write_kv_ref, triton_op("triton_rotary_kv", "rotary_and_write_kv_triton"))
paged_attention = dispatch(paged_attention_ref, triton_op("triton_attention", "paged_attention_triton"))
quantize_fp8_per_token = dispatch(
    quantize_fp8_per_token_ref, triton_op("triton_fp8_quant", "quantize_fp8_per_token_triton")
)
quantize_fp8_per_token_group = dispatch(
    quantize_fp8_per_token_group_ref, triton_op("triton_fp8_quant", "quantize_fp8_per_token_group_triton")
)
quantize_fp8_static = dispatch(quantize_fp8_static_ref, triton_op("triton_fp8_quant", "quantize_fp8_static_triton"))
fp8_matmul = dispatch(fp8_matmul_ref, triton_op("triton_fp8_gemm", "fp8_matmul_triton"))
int_weight_matmul = dispatch(int_weight_matmul_ref, triton_op("triton_int_weight_gemm", "int_weight_matmul_triton"))

__all__ = [
    "apply_rotary",
    "apply_rotary_fp32",
    "cuda_implementation",
    "dispatch",
    "fp8_linear",
    "fp8_matmul",
    "fused_add_rms_norm",
    "int_weight_matmul",
    "paged_attention",
    "quantize_fp8_per_token",
    "quantize_fp8_per_token_group",
    "quantize_fp8_static",
    "rms_norm",
    "rotary_and_write_kv",
    "silu_and_mul",
    "triton_op",
    "write_kv_cache",
]
