"""The Qwen2-VL vision tower: ViT with 2D rotary, then a 2x2 patch merger into the LM's width.

Plain nn.Linear / nn.LayerNorm / nn.Conv3d, not the tensor-parallel layers of the language models:
the tower is small (about 0.6B parameters at most) and runs once per image, so replicating it on
every rank costs little, and its output is cached per image by the caller. The module and parameter
names mirror the checkpoints' (`patch_embed.proj`, `blocks.{i}.attn.qkv`, `merger.mlp.0`, ...), so
loading is a name-for-name copy. The shared pieces (config, rotary, attention, loading) live here;
Qwen2.5-VL's window attention lives in qwen2_5_vl_vision.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from forgellm.errors import ModelLoadError
from forgellm.kernels import apply_rotary_fp32
from forgellm.models.weight_loading import WeightMap, finish_loading, load_weights

# Where the tower's tensors sit: published checkpoints use `visual.*`; a transformers 5 model's own
# state_dict (and checkpoints saved from it) uses `model.visual.*`.
VISION_PREFIXES = ("model.visual.", "visual.")

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "swish": F.silu,
    "relu": F.relu,
}


def vision_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The elementwise function transformers' ACT2FN names `name`."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ModelLoadError(
            f"vision_config.hidden_act {name!r} is not supported; supported: {', '.join(sorted(_ACTIVATIONS))}"
        ) from None


@dataclass(frozen=True)
class VisionConfig:
    """The vision tower's shape, normalised across Qwen2-VL and Qwen2.5-VL field names."""

    variant: str  # "qwen2_vl" or "qwen2_5_vl"
    embed_dim: int  # the tower's width
    depth: int
    num_heads: int
    intermediate_size: int  # the blocks' MLP width
    out_hidden_size: int  # the merger's output: the language model's width
    hidden_act: str
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    rope_theta: float = 10000.0
    window_size: int = 0  # Qwen2.5-VL: window side in pixels
    fullatt_block_indexes: tuple[int, ...] = ()  # Qwen2.5-VL: blocks that attend over the whole frame
    tokens_per_second: int | None = None  # Qwen2.5-VL: used by the LM's M-RoPE for videos, not the tower

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @classmethod
    def from_hf(cls, vision_config: dict[str, Any], model_type: str | None = None) -> VisionConfig:
        """Build from config.json's `vision_config` dict; defaults are transformers' for absent fields."""
        d = vision_config
        kind = model_type or d.get("model_type") or ""
        if kind.startswith("qwen2_5_vl"):
            variant = "qwen2_5_vl"
        elif kind.startswith("qwen2_vl"):
            variant = "qwen2_vl"
        else:
            # Only Qwen2-VL names the width `embed_dim` (its `hidden_size` is the LM's width).
            variant = "qwen2_vl" if "embed_dim" in d else "qwen2_5_vl"
        rope = d.get("rope_parameters") or {}
        common = {
            "depth": int(d.get("depth", 32)),
            "num_heads": int(d.get("num_heads", 16)),
            # Published configs say `in_chans`; transformers' config class says `in_channels`.
            "in_channels": int(d.get("in_channels", d.get("in_chans", 3))),
            "patch_size": int(d.get("patch_size", d.get("spatial_patch_size", 14))),
            "temporal_patch_size": int(d.get("temporal_patch_size", 2)),
            "spatial_merge_size": int(d.get("spatial_merge_size", 2)),
            "rope_theta": float(rope.get("rope_theta", d.get("rope_theta", 10000.0))),
        }
        if variant == "qwen2_vl":
            embed_dim = int(d.get("embed_dim", 1280))
            return cls(
                variant=variant,
                embed_dim=embed_dim,
                intermediate_size=int(embed_dim * d.get("mlp_ratio", 4)),
                out_hidden_size=int(d.get("hidden_size", 3584)),
                hidden_act=d.get("hidden_act", "quick_gelu"),
                **common,
            )
        config = cls(
            variant=variant,
            embed_dim=int(d.get("hidden_size", 3584)),
            intermediate_size=int(d.get("intermediate_size", 3420)),
            out_hidden_size=int(d.get("out_hidden_size", 3584)),
            hidden_act=d.get("hidden_act", "silu"),
            window_size=int(d.get("window_size", 112)),
            fullatt_block_indexes=tuple(int(i) for i in d.get("fullatt_block_indexes", (7, 15, 23, 31))),
            tokens_per_second=d.get("tokens_per_second", 4),
            **common,
        )
        if config.window_size < config.patch_size * config.spatial_merge_size:
            raise ModelLoadError(
                f"vision_config.window_size {config.window_size} is smaller than one merged patch "
                f"({config.patch_size * config.spatial_merge_size} pixels)"
            )
        return config


def vision_weights(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """The tower's tensors of a whole-model checkpoint, renamed relative to the tower."""
    for name, tensor in weights:
        for prefix in VISION_PREFIXES:
            if name.startswith(prefix):
                yield name[len(prefix) :], tensor
                break


class _ParamTarget:
    """Adapts a plain parameter (or the `size` slices from `start` on along `dim`) to WeightMap's Loadable: a
    shape-checked copy."""

    def __init__(self, param: nn.Parameter, dim: int = 0, start: int = 0, size: int | None = None) -> None:
        self.param = param
        self.dim, self.start = dim, start
        self.size = param.shape[dim] if size is None else size

    def load(self, param_name: str, loaded: torch.Tensor, shard: str | int | None, ckpt_name: str) -> None:
        target = self.param.narrow(self.dim, self.start, self.size)
        if loaded.shape != target.shape:
            raise ModelLoadError(
                f"checkpoint tensor {ckpt_name} has shape {tuple(loaded.shape)}, "
                f"the vision tower expects {tuple(target.shape)}; does vision_config match the checkpoint?"
            )
        target.copy_(loaded)


class PatchEmbed(nn.Module):
    """Conv3d over (temporal_patch, patch, patch) cubes, one output row per patch."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        kernel = (config.temporal_patch_size, config.patch_size, config.patch_size)
        self.proj = nn.Conv3d(config.in_channels, config.embed_dim, kernel_size=kernel, stride=kernel, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # Kernel == stride and the processor already cut the cubes out, so the conv is one matmul over
        # each flattened cube (same C, T, H, W order as the weight): much faster than a strided Conv3d.
        weight = self.proj.weight
        return F.linear(pixel_values.to(weight.dtype), weight.reshape(weight.shape[0], -1))


class VisionRotary(nn.Module):
    """2D rotary: half of each head's rotated pairs follow the patch row, half the column."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        half = head_dim // 2  # each axis gets half the head: head_dim / 4 frequencies
        inv_freq = 1.0 / (theta ** (torch.arange(0, half, 2, dtype=torch.float32) / half))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [N, head_dim] float32 for (row, col) positions [N, 2]."""
        freqs = positions.to(self.inv_freq.device, torch.float32)[..., None] * self.inv_freq  # [N, 2, D/4]
        angles = freqs.flatten(1)  # rows' angles then columns'
        emb = torch.cat((angles, angles), dim=-1)
        return emb.cos(), emb.sin()


def patch_positions(grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """(row, col) [N, 2] of every patch, in the processor's order: merge x merge blocks, row-major."""
    out = []
    for t, h, w in grid_thw.tolist():
        rows = torch.arange(h).view(h // merge, merge, 1, 1).expand(-1, -1, w // merge, merge)
        cols = torch.arange(w).view(1, 1, w // merge, merge).expand(h // merge, merge, -1, -1)
        # [h/m, m, w/m, m] -> [h/m, w/m, m, m]: the processor emits each merge block contiguously.
        pos = torch.stack((rows.transpose(1, 2).flatten(), cols.transpose(1, 2).flatten()), dim=-1)
        out.append(pos.repeat(t, 1))
    return torch.cat(out).to(grid_thw.device)


def frame_cu_seqlens(grid_thw: torch.Tensor) -> torch.Tensor:
    """Boundaries [frames + 1] of full attention: each frame of each image or video is its own segment."""
    lengths = torch.repeat_interleave(grid_thw[:, 1] * grid_thw[:, 2], grid_thw[:, 0])
    return F.pad(lengths.cumsum(0), (1, 0)).to(torch.int64)


@dataclass
class Segments:
    """Attention segments (images, frames or windows): their boundaries for a variable-length kernel, and the
    same segments grouped by length, each group one batched SDPA call (a 896 x 896 image's 64 equal windows
    cost one call per layer, not 64) where that kernel is not available."""

    cu_seqlens: torch.Tensor  # int32 [segments + 1] on the tokens' device
    max_length: int
    groups: list[tuple[int, torch.Tensor]]  # (length, token indices [segments, length])

    @classmethod
    def from_cu_seqlens(cls, cu_seqlens: list[int], device: torch.device) -> Segments:
        by_length: dict[int, list[int]] = {}
        for start, end in zip(cu_seqlens[:-1], cu_seqlens[1:]):
            if end > start:
                by_length.setdefault(end - start, []).append(start)
        groups = []
        for length, starts in by_length.items():
            index = torch.tensor(starts)[:, None] + torch.arange(length)
            groups.append((length, index.to(device)))
        bounds = torch.tensor(cu_seqlens, dtype=torch.int32, device=device)
        return cls(bounds, max(by_length, default=0), groups)


@functools.cache
def _varlen_attn() -> Callable[..., torch.Tensor] | None:
    """torch's FlashAttention over variable-length segments (torch >= 2.9), or None. Imported at first use on a
    GPU: importing it imports Triton, which CPU-only processes (and the Triton interpreter's tests) must not."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # older torch: segments run as grouped SDPA calls
        return None
    return varlen_attn


def segment_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: Segments) -> torch.Tensor:
    """Bidirectional attention of q, k, v [N, heads, head_dim] within each segment; out [N, heads, head_dim]."""
    varlen_attn = _varlen_attn() if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) else None
    if varlen_attn is not None:
        # FlashAttention over all segments at once, on the [N, heads, dim] layout: no gathers, no padding.
        cu, longest = segments.cu_seqlens, segments.max_length
        return varlen_attn(q, k, v, cu, cu, longest, longest)
    out = torch.empty_like(q)
    for _, index in segments.groups:
        # [segments, length, heads, dim] -> [segments, heads, length, dim]: segments as SDPA's batch.
        q_g, k_g, v_g = (t[index].transpose(1, 2) for t in (q, k, v))
        out[index] = F.scaled_dot_product_attention(q_g, k_g, v_g).transpose(1, 2)
    return out


class VisionAttention(nn.Module):
    """Bidirectional self-attention with 2D rotary, within each cu_seqlens segment."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, segments: Segments, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = self.qkv(x).view(n, 3, self.num_heads, -1).unbind(1)
        q, k = apply_rotary_fp32(q, k, *rope)
        # Segments keep images, frames and windows apart without a dense [N, N] mask.
        return self.proj(segment_attention(q, k, v, segments).reshape(n, -1))


class VisionMLP(nn.Module):
    """fc1 -> activation -> fc2 (Qwen2-VL)."""

    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = vision_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionBlock(nn.Module):
    """Pre-norm transformer block; the norm and MLP kinds are the variant's."""

    def __init__(self, config: VisionConfig, norm: Callable[[int], nn.Module], mlp: nn.Module) -> None:
        super().__init__()
        self.norm1 = norm(config.embed_dim)
        self.norm2 = norm(config.embed_dim)
        self.attn = VisionAttention(config.embed_dim, config.num_heads)
        self.mlp = mlp

    def forward(self, x: torch.Tensor, segments: Segments, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), segments, rope)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """Norm, then each merge x merge block of patches (contiguous rows) -> one token of the LM's width."""

    def __init__(self, config: VisionConfig, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.merged_dim = config.embed_dim * config.spatial_merge_size**2
        self.ln_q = norm(config.embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(self.merged_dim, self.merged_dim), nn.GELU(), nn.Linear(self.merged_dim, config.out_hidden_size)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).reshape(-1, self.merged_dim))


@dataclass
class TowerPlan:
    """What a tower's pass needs besides the pixels, built on the host from the grids alone: rotary tables and
    attention segments per block and, for window attention, the token order. A pass given a plan runs on the
    device without reading anything back, so it can be captured in a CUDA graph and replayed."""

    grid_thw: tuple[tuple[int, int, int], ...]
    rope: tuple[torch.Tensor, torch.Tensor]  # cos, sin [N, head_dim] float32
    block_segments: list[Segments]  # one per block (shared objects where blocks attend alike)
    order: torch.Tensor | None = None  # merge-unit order that makes windows contiguous
    restore: torch.Tensor | None = None  # its inverse, applied to the merged output

    @property
    def num_patches(self) -> int:
        return sum(t * h * w for t, h, w in self.grid_thw)


class VisionTowerBase(nn.Module):
    """What both towers share: input checks, patch embedding, the plan/run split and weight loading."""

    config: VisionConfig
    rotary: VisionRotary
    blocks: nn.ModuleList
    merger: PatchMerger

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Patches [N, C*T*P*P] of images/videos with grids [num, 3] -> LM embeddings [N / merge^2, out]."""
        return self.run(pixel_values, self.plan(grid_thw, pixel_values.device))

    def plan(self, grid_thw: torch.Tensor, device: torch.device) -> TowerPlan:
        """The host-side part of a pass over images with grids [num, 3] (best on the CPU: no read-back)."""
        c = self.config
        grids = tuple(tuple(int(v) for v in row) for row in grid_thw.tolist())
        if any(h % c.spatial_merge_size or w % c.spatial_merge_size for _, h, w in grids):
            raise ValueError(f"grid_thw {list(grids)}: h and w must be multiples of {c.spatial_merge_size}")
        grid_cpu = torch.tensor(grids, dtype=torch.int64).view(-1, 3)
        positions = patch_positions(grid_cpu, c.spatial_merge_size)
        frames = Segments.from_cu_seqlens(frame_cu_seqlens(grid_cpu).tolist(), device)
        order, segments = self._attention_layout(grid_cpu, frames, device)
        if order is None:
            return TowerPlan(grids, self.rotary(positions.to(device)), segments)
        unit = c.spatial_merge_size**2
        positions = positions.view(-1, unit, 2)[order].flatten(0, 1)
        restore = torch.argsort(order)
        return TowerPlan(grids, self.rotary(positions.to(device)), segments, order.to(device), restore.to(device))

    def _attention_layout(
        self, grid_thw: torch.Tensor, frames: Segments, device: torch.device
    ) -> tuple[torch.Tensor | None, list[Segments]]:
        """(merge-unit order or None, each block's segments): here every block attends over whole frames."""
        return None, [frames] * len(self.blocks)

    def run(self, pixel_values: torch.Tensor, plan: TowerPlan) -> torch.Tensor:
        """The device-side part: patch embedding, the blocks, the merger (no host synchronisation)."""
        c = self.config
        per_patch = c.in_channels * c.temporal_patch_size * c.patch_size**2
        if pixel_values.dim() != 2 or pixel_values.shape != (plan.num_patches, per_patch):
            raise ValueError(
                f"pixel_values has shape {tuple(pixel_values.shape)}; grid_thw {list(plan.grid_thw)} needs "
                f"({plan.num_patches}, {per_patch})"
            )
        x = self.patch_embed(pixel_values)
        if plan.order is not None:
            unit = c.spatial_merge_size**2
            x = x.view(-1, unit, x.shape[-1])[plan.order].flatten(0, 1)
        for block, segments in zip(self.blocks, plan.block_segments):
            x = block(x, segments, plan.rope)
        merged = self.merger(x)
        return merged if plan.restore is None else merged[plan.restore]

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load tensors named relative to the tower (see vision_weights); a missing or extra name raises."""
        wmap = WeightMap(ignored_suffixes=("rotary_pos_emb.inv_freq",))
        params = dict(self.named_parameters())
        stored_in_parts = set()
        for module_name, module in self.named_modules():
            parts = getattr(module, "checkpoint_parts", None)
            for ckpt_name, (param_name, dim, start, size) in (parts() if parts else {}).items():
                full_name = f"{module_name}.{param_name}"
                wmap.add(f"{module_name}.{ckpt_name}", _ParamTarget(params[full_name], dim, start, size), full_name)
                stored_in_parts.add(full_name)
        for name, param in params.items():
            if name not in stored_in_parts:
                wmap.add(name, _ParamTarget(param), name)
        try:
            load_weights(wmap, weights)
        except ModelLoadError as exc:
            raise ModelLoadError(f"vision tower: {exc}") from None
        finish_loading(self.modules())  # e.g. the gated MLP's zero padding


class Qwen2VisionTransformer(VisionTowerBase):
    """Qwen2-VL's tower: LayerNorm blocks with full attention per frame, LayerNorm patch merger."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        norm = lambda dim: nn.LayerNorm(dim, eps=1e-6)
        self.patch_embed = PatchEmbed(config)
        self.rotary = VisionRotary(config.head_dim, config.rope_theta)
        self.blocks = nn.ModuleList(
            VisionBlock(config, norm, VisionMLP(config.embed_dim, config.intermediate_size, config.hidden_act))
            for _ in range(config.depth)
        )
        self.merger = PatchMerger(config, norm)
