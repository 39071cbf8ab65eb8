"""Rotary tests run the fused Triton kernel too: without a CUDA device, in Triton's CPU interpreter.

TRITON_INTERPRET must be set before any forgellm.kernels.triton_* module is imported (the
@triton.jit decorator reads it); forgellm imports those modules lazily, so setting it here works.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
