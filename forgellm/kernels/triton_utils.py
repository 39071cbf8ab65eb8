"""Small host-side helpers shared by the Triton kernels (no Triton import here)."""

from __future__ import annotations

import functools
import os

import torch


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (and >= 1)."""
    return 1 << max(n - 1, 0).bit_length()


@functools.lru_cache(maxsize=8)
def _cuda_sm_count(index: int) -> int:
    """Streaming multiprocessors of CUDA device `index` (memoized: it never changes)."""
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """SM count of a CUDA device; a nominal 4 elsewhere (the interpreter has no device to ask)."""
    if device.type != "cuda":
        return 4
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """View x [..., N] as 3-D [A, B, N] without copying when it is a 2-D or 3-D strided view.

    Kernels index rows as (r // B, r % B) with two strides, which covers the [T, H, D] slices of a
    fused QKV output; higher ranks are reshaped (a copy only when they are not viewable).
    """
    if x.stride(-1) != 1:
        x = x.contiguous()
    if x.dim() == 1:
        return x.view(1, 1, -1)
    if x.dim() == 2:
        return x.unsqueeze(1)
    if x.dim() == 3:
        return x
    return x.reshape(-1, 1, x.shape[-1])


# The split-K GEMMs' pick_config split K only while a grid has fewer output tiles than programs-per-SM (at most
# this many) x SMs, so SPLIT_K_MAX_PROGRAMS_PER_SM x SMs tile counters serve every grid they split.
SPLIT_K_MAX_PROGRAMS_PER_SM = 4


def split_k_counters(device: torch.device) -> torch.Tensor:
    """Zeroed int32 tile counters for the split-K GEMMs' in-kernel reduction, enough for any grid they pick."""
    return torch.zeros(SPLIT_K_MAX_PROGRAMS_PER_SM * num_sms(device), dtype=torch.int32, device=device)


def check_split_k_counters(counters: torch.Tensor, tiles: int, device: torch.device) -> None:
    """ValueError unless counters is a contiguous int32 tensor on `device` with an entry per output tile."""
    if counters.dtype != torch.int32 or counters.device != device or not counters.is_contiguous():
        raise ValueError(
            f"split_k_counters must be a contiguous int32 tensor on {device}, got {counters.dtype} on {counters.device}"
        )
    if counters.numel() < tiles:
        raise ValueError(f"split_k_counters holds {counters.numel()} entries but the grid has {tiles} output tiles")
