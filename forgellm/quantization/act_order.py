"""GPTQ act-order (`g_idx`): the weight's input columns sorted into contiguous, equal groups for the int kernels.

A checkpoint's columns belong to groups in any order; the kernels want group j at columns j*W .. (j+1)*W - 1
and read x through `perm` (x[:, perm[c]] feeds weight column c). On one device every group has exactly G
columns, so W = G and perm is a permutation. A tensor-parallel rank of a row-parallel layer holds only its
share of the input columns: a ragged piece of every group. Each piece is then padded to the widest (a multiple
of the packing) with codes worth exactly zero, whose perm entries point at column 0: they add nothing.
"""

from __future__ import annotations

import torch

from forgellm.errors import ModelLoadError


def group_sorted_columns(
    q: torch.Tensor, g_idx: torch.Tensor, zeros: torch.Tensor | None, bits: int, what: str
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(codes [N, groups * W] with each group's columns together, perm [groups * W] int64, W) for codes q [N, K]
    whose column k is in group g_idx[k] of zeros' / the scales' groups; `what` names the layer in errors."""
    num_groups = zeros.shape[1] if zeros is not None else int(g_idx.max()) + 1
    g_idx = g_idx.long()
    if g_idx.numel() and (int(g_idx.min()) < 0 or int(g_idx.max()) >= num_groups):
        raise ModelLoadError(f"{what}: g_idx names groups outside 0..{num_groups - 1}")
    pack = 32 // bits
    counts = torch.bincount(g_idx, minlength=num_groups)
    width = -(-int(counts.max()) // pack) * pack
    order = torch.argsort(g_idx, stable=True)
    group_of = g_idx[order]
    first = torch.cumsum(counts, 0) - counts  # where each group starts in `order`
    dest = group_of * width + (torch.arange(g_idx.numel()) - first[group_of])
    perm = torch.zeros(num_groups * width, dtype=torch.int64)
    perm[dest] = order
    if zeros is None:  # symmetric: the code 2**(bits - 1) is worth zero
        out = torch.full((q.shape[0], num_groups * width), 1 << (bits - 1), dtype=q.dtype)
    else:  # the group's zero point is worth zero: it must be a code
        if not torch.equal(zeros, zeros.round()) or zeros.min() < 0 or zeros.max() >= 1 << bits:
            raise ModelLoadError(f"{what}: act-order zero points must be integer codes to pad a group's columns")
        out = zeros.round().to(q.dtype).repeat_interleave(width, dim=1)
    out[:, dest] = q[:, order]
    return out, perm, width
