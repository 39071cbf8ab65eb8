"""Kernels: each op is a readable pure-torch reference plus, where it pays, a Triton version.

`dispatch` picks per call: CUDA tensors go to the fast version when one exists, everything else
(and everything when FORGELLM_KERNELS=reference) to the reference. Tests compare the two.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from forgellm.kernels.activation import silu_and_mul_ref
from forgellm.kernels.attention import paged_attention_ref
from forgellm.kernels.kv_cache import write_kv_cache_ref
from forgellm.kernels.norm import fused_add_rms_norm_ref, rms_norm_ref
from forgellm.kernels.rotary import apply_rotary_ref


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


# The Triton versions arrive with the GPU fast path; until then every op is its reference.
rms_norm = dispatch(rms_norm_ref)
fused_add_rms_norm = dispatch(fused_add_rms_norm_ref)
silu_and_mul = dispatch(silu_and_mul_ref)
apply_rotary = dispatch(apply_rotary_ref)
write_kv_cache = dispatch(write_kv_cache_ref)
paged_attention = dispatch(paged_attention_ref)

__all__ = [
    "apply_rotary",
    "dispatch",
    "fused_add_rms_norm",
    "paged_attention",
    "rms_norm",
    "silu_and_mul",
    "write_kv_cache",
]
