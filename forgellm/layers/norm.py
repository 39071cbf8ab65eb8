"""RMSNorm layer over the dispatching kernels."""

from __future__ import annotations

import torch
from torch import nn

from forgellm import kernels
from forgellm.layers.linear import copy_checked


class RMSNorm(nn.Module):
    """RMSNorm; called with a residual it fuses the residual add and returns (normed, new_residual)."""

    def __init__(self, hidden_size: int, eps: float, *, dtype: torch.dtype) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype), requires_grad=False)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            return kernels.rms_norm(x, self.weight, self.eps)
        return kernels.fused_add_rms_norm(x, residual, self.weight, self.eps)

    def load(self, param_name: str, loaded: torch.Tensor, shard: str | int | None, ckpt_name: str) -> None:
        copy_checked(self.weight, loaded, ckpt_name)
