"""Weight-only quantized GEMM (W4A16, W8A16, NVFP4 weight-only): the packed layout and pure-torch reference.

y[M, N] = x[M, K] @ W[N, K]^T with W stored packed along K:

- `qweight` int32 [K // pack, N], pack = 32 // bits: element (n, k) sits in qweight[k // pack, n] at bit
  (k % pack) * bits, first element in the lowest bits, values unsigned in [0, 2**bits).
- `scales` [K // group_size, N] (x's dtype or float32); `zeros` the same shape, or None.
- value_type "int": w = (q - z) * s, z = zeros[k // G, n], or 2**(bits - 1) when zeros is None.
- value_type "e2m1" (bits 4, no zeros): q is an FP4 e2m1 code (bit 3 sign, bits 0-2 index
  E2M1_MAGNITUDES) and w = e2m1(q) * s; fp8 block and global scales are folded into `scales`.
- `perm` [K] (GPTQ act-order): the weight was re-ordered along K so groups are contiguous; the GEMM
  uses x[:, perm] in place of x. A tensor-parallel shard pads its ragged groups with columns worth zero
  (quantization/act_order.py), so perm may repeat an index and x may have fewer than K columns.
"""

from __future__ import annotations

import torch

E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
VALUE_TYPES = ("int", "e2m1")


def check_int_weight_args(
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    bits: int,
    group_size: int,
    value_type: str = "int",
    perm: torch.Tensor | None = None,
) -> tuple[int, int]:
    """Validate a packed weight and its parameters; return (K, N). Raises ValueError naming the problem."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    if value_type not in VALUE_TYPES:
        raise ValueError(f"value_type must be one of {VALUE_TYPES}, got {value_type!r}")
    if value_type == "e2m1" and (bits != 4 or zeros is not None):
        raise ValueError("value_type 'e2m1' needs bits=4 and zeros=None (FP4 codes carry their own sign)")
    if qweight.dtype != torch.int32 or qweight.dim() != 2 or qweight.shape[0] == 0:
        raise ValueError(
            f"qweight must be a 2-D int32 tensor [K // pack, N], got {qweight.dtype} {tuple(qweight.shape)}"
        )
    pack = 32 // bits
    k, n = qweight.shape[0] * pack, qweight.shape[1]
    # The kernels read a whole packed word inside one group, hence the multiple of pack.
    if group_size <= 0 or k % group_size or group_size % pack:
        raise ValueError(f"group_size {group_size} must divide K={k} and be a multiple of pack={pack}")
    if tuple(scales.shape) != (k // group_size, n) or not scales.is_floating_point():
        raise ValueError(
            f"scales must be floating [K // group_size, N] = {(k // group_size, n)}, got {tuple(scales.shape)}"
        )
    if zeros is not None and (zeros.shape != scales.shape or zeros.dtype != scales.dtype):
        raise ValueError(f"zeros must match scales' shape and dtype, got {zeros.dtype} {tuple(zeros.shape)}")
    if perm is not None and (tuple(perm.shape) != (k,) or perm.dtype not in (torch.int32, torch.int64)):
        raise ValueError(f"perm must be an int32/int64 tensor [K] = [{k}], got {perm.dtype} {tuple(perm.shape)}")
    return k, n


def check_x_width(x: torch.Tensor, k: int, perm: torch.Tensor | None) -> int:
    """x's number of columns: the weight's K, or with perm any width (perm's entries index it; checked at load)."""
    if perm is None and x.shape[-1] != k:
        raise ValueError(f"x's last dim {x.shape[-1]} must equal the weight's K={k}")
    return x.shape[-1]


def pack_int_weight(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes q [N, K] (values in [0, 2**bits)) into the int32 [K // pack, N] layout."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    pack = 32 // bits
    if q.dim() != 2 or q.shape[1] % pack:
        raise ValueError(f"q must be [N, K] with K a multiple of {pack}, got {tuple(q.shape)}")
    if q.numel() and (int(q.min()) < 0 or int(q.max()) >= 1 << bits):  # ints: uint8 would wrap 256 to 0
        raise ValueError(f"codes must lie in [0, {1 << bits})")
    n, k = q.shape
    words = q.t().reshape(k // pack, pack, n)
    # OR the fields into int32 one at a time: no int64 copy of the whole weight (an 8B model's gate|up
    # would need 0.9 GB of it at once); shifting into the sign bit wraps, which is the bit pattern we want.
    packed = torch.zeros(k // pack, n, dtype=torch.int32, device=q.device)
    for i in range(pack):
        packed |= words[:, i].to(torch.int32) << (i * bits)
    return packed


def unpack_int_weight(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    """The codes of a packed qweight [K // pack, N] as int32 [N, K]."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    pack = 32 // bits
    shifts = (torch.arange(pack, device=qweight.device, dtype=torch.int32) * bits).view(1, pack, 1)
    codes = (qweight.unsqueeze(1) >> shifts) & ((1 << bits) - 1)  # [K // pack, pack, N]
    return codes.reshape(-1, qweight.shape[1]).t().contiguous()


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    """float32 values of 4-bit e2m1 codes (bit 3 sign, bits 0-2 the magnitude index)."""
    table = torch.tensor(E2M1_MAGNITUDES, device=codes.device)
    mag = table[(codes & 7).long()]
    return torch.where((codes & 8) != 0, -mag, mag)


def e2m1_encode(values: torch.Tensor) -> torch.Tensor:
    """int32 code of the nearest e2m1 number to each value (ties to the smaller magnitude; beyond 6 clamps)."""
    table = torch.tensor(E2M1_MAGNITUDES, device=values.device)
    # The midpoints between neighbours; bucketize puts a value equal to one in the lower bucket (the tie rule),
    # without the [..., 8] distance tensor an argmin over the table would need.
    index = torch.bucketize(values.float().abs(), (table[1:] + table[:-1]) / 2)
    return (index + 8 * (values < 0)).to(torch.int32)


def dequantize_int_weight(
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    bits: int,
    group_size: int,
    value_type: str = "int",
    perm: torch.Tensor | None = None,
) -> torch.Tensor:
    """The weight W [N, K] in scales' dtype, computed in float32 and rounded once.

    Without perm, columns are in stored order. With perm, column perm[j] holds stored column j (padding columns,
    worth zero, add nothing), so W is the plain nn.Linear weight [N, max(perm) + 1]: x @ W^T equals the GEMM of
    x[:, perm] with the stored order.
    """
    check_int_weight_args(qweight, scales, zeros, bits, group_size, value_type, perm)
    codes = unpack_int_weight(qweight, bits)
    expand = lambda t: t.float().repeat_interleave(group_size, dim=0).t()  # [K // G, N] -> [N, K]
    if value_type == "e2m1":
        values = e2m1_decode(codes)
    else:
        values = codes.float() - (expand(zeros) if zeros is not None else float(1 << (bits - 1)))
    w = values * expand(scales)
    if perm is not None:
        w = w.new_zeros(w.shape[0], int(perm.max()) + 1).index_add_(1, perm.long(), w)
    return w.to(scales.dtype)


def int_weight_matmul_ref(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    bits: int,
    group_size: int,
    value_type: str = "int",
    perm: torch.Tensor | None = None,
    split_k_counters: torch.Tensor | None = None,
) -> torch.Tensor:
    """y [..., N] = x[..., perm] @ W^T in x's dtype, W dequantized (in stored order) then cast to x's dtype.

    split_k_counters: for the Triton version (the dispatched op passes the same call to both); unused here."""
    k, _ = check_int_weight_args(qweight, scales, zeros, bits, group_size, value_type, perm)
    check_x_width(x, k, perm)
    w = dequantize_int_weight(qweight, scales, zeros, bits, group_size, value_type)
    if perm is not None:
        x = x.index_select(-1, perm.long())
    return x @ w.to(x.dtype).t()
