"""The Qwen2.5-VL vision tower: Qwen2-VL's with RMSNorm, a gated SiLU MLP and window attention.

Most blocks attend only within square windows of window_size pixels; the fullatt_block_indexes
blocks attend over the whole frame. Tokens are reordered once so every window is a contiguous run
(whole merge blocks move together), and the merged output is put back in the processor's order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from forgellm.models.qwen2_vl_vision import (
    PatchEmbed,
    PatchMerger,
    Segments,
    VisionBlock,
    VisionConfig,
    VisionRotary,
    VisionTowerBase,
    frame_cu_seqlens,
    vision_activation,
)


class VisionRMSNorm(nn.Module):
    """RMSNorm computed in float32, scaled in the input dtype (as transformers' Qwen2_5_VLRMSNorm)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class GatedVisionMLP(nn.Module):
    """down(act(gate(x)) * up(x)), all with bias."""

    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden)
        self.up_proj = nn.Linear(dim, hidden)
        self.down_proj = nn.Linear(hidden, dim)
        self.act = vision_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


def window_index(grid_thw: torch.Tensor, config: VisionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge-block order that makes each window contiguous [N / merge^2], and the windows' cu_seqlens.

    Windows tile each frame from the top-left corner; those at the bottom and right edges may be
    partial. cu_seqlens counts patches (merge^2 per merge block), as the blocks see them.
    """
    merge = config.spatial_merge_size
    side = config.window_size // merge // config.patch_size  # window side in merge blocks
    order, lengths = [], []
    offset = 0
    for t, h, w in grid_thw.tolist():
        mh, mw = h // merge, w // merge
        pad_h, pad_w = -mh % side, -mw % side
        ids = F.pad(torch.arange(t * mh * mw).view(t, mh, mw), (0, pad_w, 0, pad_h), value=-1)
        nh, nw = (mh + pad_h) // side, (mw + pad_w) // side
        ids = ids.view(t, nh, side, nw, side).permute(0, 1, 3, 2, 4).reshape(t * nh * nw, side * side)
        valid = ids >= 0
        order.append(ids[valid] + offset)
        lengths.append(valid.sum(1))
        offset += t * mh * mw
    counts = torch.cat(lengths) * merge**2
    cu_seqlens = F.pad(counts.cumsum(0), (1, 0))
    return torch.cat(order).to(grid_thw.device), cu_seqlens


class Qwen2_5VisionTransformer(VisionTowerBase):
    """Qwen2.5-VL's tower: RMSNorm blocks with window or full attention, RMSNorm patch merger."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config)
        self.rotary = VisionRotary(config.head_dim, config.rope_theta)
        self.blocks = nn.ModuleList(
            VisionBlock(
                config, VisionRMSNorm, GatedVisionMLP(config.embed_dim, config.intermediate_size, config.hidden_act)
            )
            for _ in range(config.depth)
        )
        self.merger = PatchMerger(config, VisionRMSNorm)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Patches [N, C*T*P*P] of images/videos with grids [num, 3] -> LM embeddings [N / merge^2, out]."""
        x, positions = self._embed(pixel_values, grid_thw)
        unit = self.config.spatial_merge_size**2
        order, window_cu = window_index(grid_thw, self.config)
        # Windows never straddle frames, so the frames stay contiguous too: full-attention blocks can
        # use the per-frame boundaries on the reordered sequence.
        x = x.view(-1, unit, x.shape[-1])[order].flatten(0, 1)
        positions = positions.view(-1, unit, 2)[order].flatten(0, 1)
        rope = self.rotary(positions)
        frames = Segments.from_cu_seqlens(frame_cu_seqlens(grid_thw).tolist(), x.device)
        windows = Segments.from_cu_seqlens(window_cu.tolist(), x.device)
        full = set(self.config.fullatt_block_indexes)
        for i, block in enumerate(self.blocks):
            x = block(x, frames if i in full else windows, rope)
        merged = self.merger(x)
        return merged[torch.argsort(order)]
