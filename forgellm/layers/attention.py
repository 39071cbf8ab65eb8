"""Paged attention layer: writes this step's K/V into the cache (rotating q and k first when given
the rotary angles), then attends over it."""

from __future__ import annotations

import torch
from torch import nn

from forgellm import kernels
from forgellm.errors import ModelLoadError
from forgellm.worker.forward_batch import ForwardBatch


class Attention(nn.Module):
    """Attention of the batch's new tokens over their cached sequences (any GQA ratio).

    The ModelRunner binds `k_cache`/`v_cache` ([num_blocks, block_size, num_kv_heads, head_dim])
    once at start-up; the layer never allocates cache memory itself. When those are float8_e4m3fn,
    K and V are stored divided by `k_scale` / `v_scale` (per-layer floats, fixed once the weights are
    loaded: CUDA graphs capture them as constants); other cache dtypes ignore the scales.
    """

    def __init__(
        self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float, sliding_window: int | None = None
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale
        self.sliding_window = sliding_window
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None
        self.k_scale: float = 1.0
        self.v_scale: float = 1.0

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        batch: ForwardBatch,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """q [T, Hq, D], k/v [T, Hkv, D] -> [T, Hq * D]. Pass `rope` = (cos, sin) with q/k not yet rotated
        to rotate them in the cache-write kernel: one launch (one CUDA-graph node) per layer instead of two.
        """
        if self.k_cache is None or self.v_cache is None:
            raise RuntimeError("KV cache not bound: the ModelRunner binds it before the first forward")
        scales = dict(k_scale=self.k_scale, v_scale=self.v_scale)
        if rope is None:
            kernels.write_kv_cache(k, v, self.k_cache, self.v_cache, batch.slot_mapping, **scales)
        else:
            # The rotated k is not needed back: attention reads every K, this step's too, from the cache.
            q = kernels.rotary_and_write_kv(q, k, v, *rope, self.k_cache, self.v_cache, batch.slot_mapping, **scales)
        out = kernels.paged_attention(
            q,
            self.k_cache,
            self.v_cache,
            batch.block_tables,
            batch.query_start_loc,
            batch.seq_lens,
            self.scale,
            self.sliding_window,
            max_query_len=batch.max_query_len,
            max_seq_len=batch.max_seq_len,
            **scales,
        )
        return out.flatten(1)

    def load(self, param_name: str, loaded: torch.Tensor, shard: str | int | None, ckpt_name: str) -> None:
        """Take a checkpoint's KV-cache scale (`k_scale` / `v_scale`, a scalar) for an fp8 cache."""
        if loaded.numel() != 1:
            raise ModelLoadError(f"KV-cache scale {ckpt_name!r} must be a scalar, got shape {tuple(loaded.shape)}")
        value = float(loaded.float().reshape(()))
        if not value > 0 or value == float("inf"):
            raise ModelLoadError(f"KV-cache scale {ckpt_name!r} must be a positive finite number, got {value}")
        setattr(self, param_name, value)
