"""Tensor parallelism for quantized layers: this rank's share of a canonical part (IntPart, Fp8Part, Fp4Part).

Readers turn a checkpoint projection into one canonical [N, K] part whatever its format; sharding that part
once covers every format. Column-parallel layers keep their output rows (codes, per-row and per-group
scales, zero points); row-parallel layers keep their input columns (codes, the scale groups of those
columns, AWQ's pre-scale); act-order (GPTQ desc_act) weights keep every group's scales, since a rank's columns
hold a piece of each group.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from forgellm.errors import ModelLoadError
from forgellm.quantization.parts import Fp4Part, Fp8Part, IntPart

if TYPE_CHECKING:
    from forgellm.layers.linear import LinearBase


def shard_part(
    layer: LinearBase, part: IntPart | Fp8Part | Fp4Part, index: int, prefix: str
) -> IntPart | Fp8Part | Fp4Part:
    """This rank's slice of part `index` of `layer` (a whole projection as read from the checkpoint)."""
    weight = part.q if isinstance(part, IntPart) else part.weight if isinstance(part, Fp8Part) else part.codes
    full_rows, full_cols = weight.shape

    def rows(t: torch.Tensor | None) -> torch.Tensor | None:
        """Output-channel rows (a per-row tensor of full_rows rows)."""
        return t if t is None or t.dim() == 0 or t.shape[0] != full_rows else layer.rank_slice(t, 0, index)

    def columns(t: torch.Tensor | None, what: str) -> torch.Tensor | None:
        """Input columns, or the groups of them (a tensor whose last dim spans K in equal groups)."""
        if t is None or t.dim() == 0 or t.shape[-1] == 1:
            return t
        if t.shape[-1] % layer.parallel.tp_size:
            raise ModelLoadError(
                f"{prefix}: its {what} has {t.shape[-1]} groups along the inputs, not divisible by "
                f"tensor_parallel_size {layer.parallel.tp_size}"
            )
        return layer.rank_slice(t, t.dim() - 1, index)

    if layer.tp_dim == 0:  # column parallel: output rows
        if isinstance(part, Fp8Part) and part.scale.dim() == 2 and part.scale.shape[0] not in (1, full_rows):
            start, size = _row_range(layer, full_rows, index)
            block = full_rows // part.scale.shape[0]
            if start % block or size % block:
                raise ModelLoadError(f"{prefix}: fp8 weight blocks of {block} rows straddle the ranks' rows")
            scale = part.scale[start // block : (start + size) // block]
            return replace(part, weight=rows(part.weight), scale=scale)
        if isinstance(part, IntPart):
            return replace(part, q=rows(part.q), scales=rows(part.scales), zeros=rows(part.zeros))
        if isinstance(part, Fp8Part):
            return replace(part, weight=rows(part.weight), scale=rows(part.scale))
        return replace(part, codes=rows(part.codes), scales=rows(part.scales))
    # row parallel: input columns
    if isinstance(part, IntPart):
        pre = None if part.pre_scale is None else layer.rank_slice(part.pre_scale, 0, index)
        groups = part.scales.shape[-1]
        if part.g_idx is not None and torch.equal(
            part.g_idx, torch.arange(full_cols, device=part.g_idx.device) // (full_cols // groups)
        ):
            part = replace(part, g_idx=None)  # GPTQ without act-order writes the plain order out
        if part.g_idx is not None:
            # Act-order: a rank's columns hold ragged pieces of every group, so it keeps every group's scales and
            # its columns' group ids; the method pads the pieces to whole groups (IntWeightOnlyMethod.build).
            return replace(
                part, q=layer.rank_slice(part.q, 1, index), g_idx=layer.rank_slice(part.g_idx, 0, index), pre_scale=pre
            )
        return replace(
            part,
            q=layer.rank_slice(part.q, 1, index),
            scales=columns(part.scales, "scales"),
            zeros=columns(part.zeros, "zero points"),
            pre_scale=pre,
        )
    if isinstance(part, Fp8Part):
        return replace(part, weight=layer.rank_slice(part.weight, 1, index), scale=columns(part.scale, "scale"))
    return replace(part, codes=layer.rank_slice(part.codes, 1, index), scales=columns(part.scales, "scales"))


def _row_range(layer: LinearBase, full_rows: int, index: int) -> tuple[int, int]:
    """(first row, rows) of this rank's share of a part with `full_rows` output rows."""
    probe = torch.arange(full_rows)
    kept = layer.rank_slice(probe, 0, index)
    return int(kept[0]), kept.shape[0]
