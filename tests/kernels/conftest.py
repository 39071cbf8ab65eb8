"""Kernel tests: without a CUDA device, Triton kernels run in its CPU interpreter.

TRITON_INTERPRET must be set before Triton is first imported (its @triton.jit decorator reads it): tests/
conftest.py sets it for the whole session; this file says so again for a run of tests/kernels alone.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
