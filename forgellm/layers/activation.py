"""Activation layers over the dispatching kernels."""

from __future__ import annotations

import torch
from torch import nn

from forgellm import kernels


class SiluAndMul(nn.Module):
    """The gated-MLP activation: silu(gate) * up on a fused [gate | up] input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.silu_and_mul(x)
