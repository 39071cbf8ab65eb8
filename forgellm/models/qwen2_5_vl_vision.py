"""The Qwen2.5-VL vision tower: Qwen2-VL's with RMSNorm, a gated SiLU MLP and window attention.

Most blocks attend only within square windows of window_size pixels; the fullatt_block_indexes
blocks attend over the whole frame. Tokens are reordered once so every window is a contiguous run
(whole merge blocks move together), and the merged output is put back in the processor's order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from forgellm.kernels import rms_norm, silu_and_mul
from forgellm.models.qwen2_vl_vision import (
    PatchEmbed,
    PatchMerger,
    Segments,
    VisionBlock,
    VisionConfig,
    VisionRotary,
    VisionTowerBase,
    vision_activation,
)


class VisionRMSNorm(nn.Module):
    """RMSNorm computed in float32, scaled in the input dtype (as transformers' Qwen2_5_VLRMSNorm)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class GatedVisionMLP(nn.Module):
    """down(act(gate(x)) * up(x)), all with bias; gate and up run as one projection (checkpoints keep two).

    The hidden width is padded with zeros to a multiple of 64: Qwen2.5-VL's 3420 makes down_proj's rows 6840
    bytes, not 16-byte aligned, and cuBLAS then falls back to a kernel at a third of the speed."""

    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.hidden = hidden
        self.padded = -(-hidden // 64) * 64
        self.gate_up_proj = nn.Linear(dim, 2 * self.padded)
        self.down_proj = nn.Linear(self.padded, dim)
        self.act_name = act
        self.act = vision_activation(act)
        self.finish_loading()

    def checkpoint_parts(self) -> dict[str, tuple[str, int, int, int]]:
        """Checkpoint name -> (own parameter, dim, start, size): where the checkpoint's tensors sit."""
        parts = {
            f"{part}_proj.{kind}": (f"gate_up_proj.{kind}", 0, index * self.padded, self.hidden)
            for index, part in enumerate(("gate", "up"))
            for kind in ("weight", "bias")
        }
        return parts | {"down_proj.weight": ("down_proj.weight", 1, 0, self.hidden)}

    @torch.no_grad()
    def finish_loading(self) -> None:
        """Zero the padding (after loading or random init), so the padded width adds exact zeros."""
        pad = self.padded - self.hidden
        if pad:
            for start in (self.hidden, self.padded + self.hidden):
                self.gate_up_proj.weight[start : start + pad].zero_()
                self.gate_up_proj.bias[start : start + pad].zero_()
            self.down_proj.weight[:, self.hidden :].zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        if self.act_name in ("silu", "swish"):
            return self.down_proj(silu_and_mul(gate_up))  # one fused kernel on the GPU
        gate, up = gate_up.chunk(2, dim=-1)
        return self.down_proj(self.act(gate) * up)


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

    def _attention_layout(
        self, grid_thw: torch.Tensor, frames: Segments, device: torch.device
    ) -> tuple[torch.Tensor | None, list[Segments]]:
        """Merge units reordered so each window is contiguous; windows, or whole frames in the full-attention
        blocks (windows never straddle frames, so the frames stay contiguous in the new order)."""
        order, window_cu = window_index(grid_thw, self.config)
        windows = Segments.from_cu_seqlens(window_cu.tolist(), device)
        full = set(self.config.fullatt_block_indexes)
        return order, [frames if i in full else windows for i in range(len(self.blocks))]
