"""Kernels: each op is a readable pure-torch reference plus, where it pays, a Triton version.

`dispatch` picks per call: CUDA tensors go to the fast version when one exists, everything else
(and everything when FORGELLM_KERNELS=reference) to the reference. Tests compare the two.
The Triton versions live in forgellm/kernels/triton_*.py as `<op>_triton`; tests call those
directly, on CPU tensors under TRITON_INTERPRET=1 (tests/kernels/conftest.py sets it).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from forgellm.kernels.activation import silu_and_mul_ref
from forgellm.kernels.attention import paged_attention_ref
from forgellm.kernels.kv_cache import write_kv_cache_ref
from forgellm.kernels.norm import fused_add_rms_norm_ref, rms_norm_ref
from forgellm.kernels.rotary import apply_rotary_ref
from forgellm.kernels.rotary_kv import rotary_and_write_kv_ref


def dispatch(reference: Callable[..., Any], fast: Callable[..., Any] | None = None) -> Callable[..., Any]:
    """Return an op that runs `fast` on CUDA tensors (unless forced to the reference) else `reference`."""
    if fast is None:
        return reference
    force_reference = os.environ.get("FORGELLM_KERNELS") == "reference"

    def op(x: Any, *args: Any, **kwargs: Any) -> Any:
        if x.is_cuda and not force_reference:
            return fast(x, *args, **kwargs)
        return reference(x, *args, **kwargs)

    op.__name__ = reference.__name__.removesuffix("_ref")
    op.__doc__ = reference.__doc__
    return op


def triton_op(module: str, name: str, reference: Callable[..., Any]) -> Callable[..., Any]:
    """A stand-in for forgellm.kernels.<module>.<name> that imports it on first call.

    Importing late keeps Triton out of CPU-only processes and lets tests set TRITON_INTERPRET
    before the kernels are decorated; without Triton installed the reference runs instead.
    """
    resolved: list[Callable[..., Any]] = []  # filled once; local to this closure, not global state

    def op(*args: Any, **kwargs: Any) -> Any:
        if not resolved:
            try:
                resolved.append(getattr(importlib.import_module(f"forgellm.kernels.{module}"), name))
            except ImportError:
                resolved.append(reference)
        return resolved[0](*args, **kwargs)

    op.__name__ = name
    return op


rms_norm = dispatch(rms_norm_ref, triton_op("triton_norm", "rms_norm_triton", rms_norm_ref))
fused_add_rms_norm = dispatch(
    fused_add_rms_norm_ref, triton_op("triton_norm", "fused_add_rms_norm_triton", fused_add_rms_norm_ref)
)
silu_and_mul = dispatch(silu_and_mul_ref, triton_op("triton_activation", "silu_and_mul_triton", silu_and_mul_ref))
apply_rotary = dispatch(apply_rotary_ref, triton_op("triton_rotary", "apply_rotary_triton", apply_rotary_ref))
write_kv_cache = dispatch(write_kv_cache_ref, triton_op("triton_kv_cache", "write_kv_cache_triton", write_kv_cache_ref))
rotary_and_write_kv = dispatch(
    rotary_and_write_kv_ref, triton_op("triton_rotary_kv", "rotary_and_write_kv_triton", rotary_and_write_kv_ref)
)
paged_attention = dispatch(
    paged_attention_ref, triton_op("triton_attention", "paged_attention_triton", paged_attention_ref)
)

__all__ = [
    "apply_rotary",
    "dispatch",
    "fused_add_rms_norm",
    "paged_attention",
    "rms_norm",
    "rotary_and_write_kv",
    "silu_and_mul",
    "triton_op",
    "write_kv_cache",
]
