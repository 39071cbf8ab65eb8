"""Weight-only quantized GEMM: the packed layout, the reference against a naive dequantize-then-matmul
written here, and the Triton kernel (CPU: under TRITON_INTERPRET=1, tiny shapes) against the reference.

Covers 4 and 8 bits, grouped and per-channel scales, zeros or symmetric, e2m1, act-order perm, odd M and
N, the M = 1 FMA path, the tl.dot path, split-K (two kernels, or summed by each tile's last slice), the tiled
large-M path and dequantize + mm.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from forgellm import kernels  # noqa: E402
from forgellm.kernels import triton_int_weight_gemm as tiw  # noqa: E402
from forgellm.kernels.int_weight_gemm import (  # noqa: E402
    dequantize_int_weight,
    e2m1_decode,
    e2m1_encode,
    int_weight_matmul_ref,
    pack_int_weight,
    unpack_int_weight,
)
from forgellm.kernels.triton_int_weight_gemm import GemmConfig, int_weight_gemm_triton  # noqa: E402
from forgellm.kernels.triton_utils import SPLIT_K_MAX_PROGRAMS_PER_SM, split_k_counters  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the interpreter's numpy use


def make(n, k, bits, group, zeros, dtype=F32, perm=False, seed=0):
    """Codes [N, K], then packed weight, scales, zeros and perm on the test device."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (n, k), generator=gen, dtype=torch.int32)
    scales = (torch.rand(k // group, n, generator=gen) * 0.1 + 0.01).to(dtype)
    z = torch.randint(0, 1 << bits, (k // group, n), generator=gen).to(dtype) if zeros else None
    p = torch.randperm(k, generator=gen).int() if perm else None
    to = lambda t: None if t is None else t.to(DEVICE)
    return codes, to(pack_int_weight(codes, bits)), to(scales), to(z), to(p)


def naive(x, codes, scales, zeros, bits, group, value_type, perm):
    """float64 y from the unpacked codes, written independently of the module under test."""
    g = torch.arange(codes.shape[1]) // group
    s = scales.double().cpu()[g].t()
    if value_type == "e2m1":
        w = torch.tensor(E2M1, dtype=torch.float64)[codes.long()] * s
    else:
        z = zeros.double().cpu()[g].t() if zeros is not None else 2.0 ** (bits - 1)
        w = (codes.double() - z) * s
    xd = x.double().cpu()
    return (xd if perm is None else xd[..., perm.long().cpu()]) @ w.t()


def rel_err(out, ref):
    return ((out.double().cpu() - ref.double().cpu()).norm() / ref.double().cpu().norm()).item()


def test_pack_layout_and_round_trip():
    """Element (n, k) at qweight[k // pack, n], bit (k % pack) * bits, first element lowest."""
    for bits in (4, 8):
        codes = torch.randint(0, 1 << bits, (3, 16), dtype=torch.int32)
        packed = pack_int_weight(codes, bits)
        pack = 32 // bits
        assert packed.dtype == torch.int32 and packed.shape == (16 // pack, 3)
        for n in range(3):
            for w in range(16 // pack):
                word = sum(int(codes[n, w * pack + i]) << (i * bits) for i in range(pack))
                assert packed[w, n].item() == (word - (1 << 32) if word >= 1 << 31 else word)
        assert torch.equal(unpack_int_weight(packed, bits), codes)


def test_e2m1_encode_decode():
    codes = torch.arange(16, dtype=torch.int32)
    assert e2m1_decode(codes).tolist() == E2M1
    nonzero = codes[codes != 8]  # -0 encodes as +0
    assert torch.equal(e2m1_encode(e2m1_decode(nonzero)), nonzero)
    values = torch.tensor([0.2, 0.3, 1.2, 1.3, 2.4, 2.6, 5.1, 9.0, -0.74, -100.0])
    assert e2m1_decode(e2m1_encode(values)).tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 6.0, 6.0, -0.5, -6.0]


@pytest.mark.parametrize(
    "bits, group, zeros, value_type, perm",
    [(4, 32, True, "int", False), (4, 128, False, "int", True), (8, 64, True, "int", True),
     (8, 256, False, "int", False), (4, 16, False, "e2m1", True)],
)  # fmt: skip
def test_reference_matches_naive(bits, group, zeros, value_type, perm):
    codes, qw, s, z, p = make(24, 256, bits, group, zeros, perm=perm, seed=bits + group)
    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    ref = naive(x, codes, s, z, bits, group, value_type, p)
    assert rel_err(int_weight_matmul_ref(x, qw, s, z, bits, group, value_type, p), ref) < 1e-6
    # With perm, the dequantized weight is in x's own order: a plain linear layer.
    w = dequantize_int_weight(qw, s, z, bits, group, value_type, p)
    assert rel_err(x @ w.t(), ref) < 1e-6


CASES = [  # M, N, K, bits, group, zeros, value_type, x dtype, perm
    (1, 40, 256, 4, 128, True, "int", F32, False),  # FMA path, one scale row per block, split-K
    (1, 72, 256, 4, 32, False, "int", BF16, False),  # FMA path, scales gathered per packed row
    (1, 40, 512, 8, 512, False, "int", F16, False),  # per-channel int8
    (1, 40, 256, 4, 16, False, "e2m1", BF16, True),
    (3, 40, 256, 4, 64, True, "int", BF16, True),  # tl.dot path, gathered scales, perm
    (3, 72, 256, 8, 128, False, "int", F32, False),
    (17, 40, 256, 4, 256, True, "int", F16, False),  # two M tiles, per-channel with zeros
    (17, 72, 128, 8, 32, True, "int", BF16, True),
    (5, 40, 256, 4, 16, False, "e2m1", F32, False),
]


@pytest.mark.parametrize("m, n, k, bits, group, zeros, value_type, dtype, perm", CASES)
def test_triton_matches_reference(m, n, k, bits, group, zeros, value_type, dtype, perm):
    _, qw, s, z, p = make(n, k, bits, group, zeros, dtype, perm, seed=m + n)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(DEVICE, dtype)
    out = tiw.int_weight_matmul_triton(x, qw, s, z, bits, group, value_type, p)
    ref = int_weight_matmul_ref(x, qw, s, z, bits, group, value_type, p)
    assert out.dtype == dtype and out.shape == (m, n)
    assert rel_err(out, ref) < TOLERANCE[dtype]


@pytest.mark.parametrize(
    "m, cfg",
    [(1, GemmConfig(1, 32, 128, 1, 1, 1)), (1, GemmConfig(1, 64, 256, 4, 1, 1)),  # FMA: one slice, 4 slices
     (4, GemmConfig(1, 32, 128, 2, 1, 1)),  # FMA path at M > 1: one program row per x row
     (4, GemmConfig(16, 32, 128, 3, 1, 1)), (4, GemmConfig(16, 16, 256, 1, 1, 1)),  # dot: split-K, one block
     (40, GemmConfig(32, 32, 128, 1, 1, 1))],  # tiled large-M
)  # fmt: skip
def test_triton_configs(m, cfg):
    """Explicit configs: every path of the fused kernel gives the reference (4-bit, g32, zeros, perm)."""
    _, qw, s, z, p = make(40, 384, 4, 32, True, perm=True, seed=3)
    x = torch.randn(m, 384, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    out = int_weight_gemm_triton(x, qw, s, z, 4, 32, "int", p, config=cfg)
    assert rel_err(out, int_weight_matmul_ref(x, qw, s, z, 4, 32, "int", p)) < TOLERANCE[F32]


FUSED_CASES = [  # M, x dtype, config (K = 384, N = 40: two 32-column tiles, the second one partial)
    (1, BF16, GemmConfig(1, 32, 256, 2, 1, 1)),  # FMA path, the last K block half full
    (3, F32, GemmConfig(1, 32, 128, 3, 1, 1)),  # FMA path, a program row per x row: 6 tiles
    (3, BF16, GemmConfig(16, 32, 128, 3, 1, 1)),  # tl.dot path
]


@pytest.mark.parametrize("m, dtype, cfg", FUSED_CASES)
def test_split_k_summed_in_kernel(m, dtype, cfg, monkeypatch):
    """With counters each tile's last slice sums the partials: the two-kernel result bit for bit, twice (the
    counters are back to zero after each call), and no second launch."""
    _, qw, s, z, p = make(40, 384, 4, 32, True, dtype, perm=True, seed=m)
    x = torch.randn(m, 384, generator=torch.Generator().manual_seed(5)).to(DEVICE, dtype)
    two_kernels = int_weight_gemm_triton(x, qw, s, z, 4, 32, "int", p, config=cfg)
    monkeypatch.setattr(tiw, "_sum_splits_kernel", None)  # the fused path must not launch it
    counters = torch.zeros(8, dtype=torch.int32, device=DEVICE)
    for _ in range(2):
        out = int_weight_gemm_triton(x, qw, s, z, 4, 32, "int", p, config=cfg, split_k_counters=counters)
        assert torch.equal(out, two_kernels) and not counters.any()
    assert rel_err(out, int_weight_matmul_ref(x, qw, s, z, 4, 32, "int", p)) < TOLERANCE[dtype]


def test_split_k_counters_of_a_layer_and_their_checks():
    """The dispatcher's path with a layer's counters (its own split-K), and counters that do not fit refused."""
    _, qw, s, _, _ = make(40, 384, 4, 32, False, seed=9)
    x = torch.randn(1, 384, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    counters = split_k_counters(DEVICE)
    assert tiw.pick_config(1, 40, 384, 4, 32, DEVICE).split_k > 1
    out = tiw.int_weight_matmul_triton(x, qw, s, None, 4, 32, split_k_counters=counters)
    assert torch.equal(out, int_weight_gemm_triton(x, qw, s, None, 4, 32)) and not counters.any()
    # pick_config splits only grids of fewer tiles than programs-per-SM x SMs: the layer's counters cover them.
    assert max(tile[-1] for _, tile in tiw.TILES) <= SPLIT_K_MAX_PROGRAMS_PER_SM
    cfg = GemmConfig(1, 32, 128, 3, 1, 1)  # two tiles
    bad = [torch.zeros(1, dtype=torch.int32), torch.zeros(2, dtype=torch.int64), torch.zeros(4, dtype=torch.int32)[::2]]
    for counters in bad:
        with pytest.raises(ValueError, match="split_k_counters"):
            int_weight_gemm_triton(x, qw, s, None, 4, 32, config=cfg, split_k_counters=counters.to(DEVICE))


def test_large_m_dequant_mm_and_dispatch(monkeypatch):
    """Above DEQUANT_MM_MIN_M rows: dequantize + mm (bf16 x, float32 scales, leading dims kept)."""
    _, qw, s, z, p = make(72, 128, 8, 64, True, F32, perm=True, seed=5)
    x = torch.randn(2, 3, 128, generator=torch.Generator().manual_seed(6)).to(DEVICE, BF16)
    ref = int_weight_matmul_ref(x, qw, s, z, 8, 64, "int", p)
    monkeypatch.setattr(tiw, "DEQUANT_MM_MIN_M", 4)
    assert tiw.use_dequant_mm(6) and not tiw.use_dequant_mm(4)
    out = tiw.int_weight_matmul_triton(x, qw, s, z, 8, 64, "int", p)
    assert out.shape == (2, 3, 72) and out.dtype == BF16
    assert rel_err(out, ref) < TOLERANCE[BF16]


@pytest.mark.parametrize(
    "bits, group, zeros, value_type", [(8, 64, True, "int"), (4, 32, False, "int"), (4, 16, False, "e2m1")]
)
def test_dequantize_kernel(bits, group, zeros, value_type):
    _, qw, s, z, _ = make(40, 128, bits, group, zeros, seed=bits + group)
    w = tiw.dequantize_int_weight_triton(qw, s, z, bits, group, value_type)
    assert w.dtype == F32 and rel_err(w, dequantize_int_weight(qw, s, z, bits, group, value_type)) < 1e-6


def test_dispatch_and_empty():
    assert kernels.int_weight_matmul.__name__ == "int_weight_matmul"
    _, qw, s, _, _ = make(40, 64, 4, 64, False)
    x = torch.zeros(0, 64, device=DEVICE, dtype=BF16)
    assert int_weight_gemm_triton(x, qw, s.bfloat16(), None, 4, 64).shape == (0, 40)


def test_bad_arguments_raise():
    _, qw, s, z, _ = make(40, 128, 4, 32, True)
    x = torch.randn(2, 128, device=DEVICE)
    bad = [
        dict(bits=3),
        dict(group_size=48),  # does not divide K
        dict(group_size=4),  # not a multiple of pack
        dict(value_type="nf4"),
        dict(value_type="e2m1"),  # with zeros
        dict(value_type="e2m1", zeros=None, bits=8),
        dict(qweight=qw.float()),
        dict(scales=s[:2]),
        dict(zeros=z[:, :8]),
        dict(perm=torch.arange(64, device=DEVICE)),
        dict(x=torch.randn(2, 64, device=DEVICE)),
    ]
    base = dict(x=x, qweight=qw, scales=s, zeros=z, bits=4, group_size=32, value_type="int", perm=None)
    for fn in (int_weight_matmul_ref, tiw.int_weight_matmul_triton):
        for change in bad:
            with pytest.raises(ValueError):
                fn(**(base | change))
    with pytest.raises(ValueError):
        pack_int_weight(torch.full((2, 8), 16), 4)  # code out of range
    with pytest.raises(ValueError):
        pack_int_weight(torch.zeros(2, 12, dtype=torch.int32), 4)  # K not a multiple of pack
    with pytest.raises(ValueError):
        int_weight_gemm_triton(x, qw, s, z, 4, 32, config=GemmConfig(8, 32, 128, 1, 1, 1))  # dot needs 16 rows


@pytest.mark.parametrize("bits, zeros", [(4, True), (4, False), (8, True)])
@pytest.mark.parametrize("m", [1, 3, 9])
def test_act_order_shard_with_ragged_groups(bits, zeros, m, monkeypatch):
    """A tensor-parallel rank's act-order columns: a ragged piece of each of 4 groups of 32 (its 72 of 128 columns).
    quantization/act_order.py pads the pieces to equal groups with codes worth zero and a perm that repeats
    column 0; the FMA path, the dot path and dequantize + mm give x @ W^T with W written from the definition
    (column k in group g_idx[k]), and dequantize_int_weight gives W itself."""
    from forgellm.quantization.act_order import group_sorted_columns

    gen = torch.Generator().manual_seed(bits + m)
    n, k, groups = 40, 72, 4
    g_idx = torch.randint(0, groups, (k,), generator=gen)
    g_idx[:groups] = torch.arange(groups)  # every group present
    codes = torch.randint(0, 1 << bits, (n, k), generator=gen, dtype=torch.int32)
    scales = torch.rand(n, groups, generator=gen) * 0.1 + 0.01
    z = torch.randint(0, 1 << bits, (n, groups), generator=gen).float() if zeros else None
    w = (codes.double() - (z.double()[:, g_idx] if zeros else 2.0 ** (bits - 1))) * scales.double()[:, g_idx]
    padded, perm, width = group_sorted_columns(codes, g_idx, z, bits, "layer")
    assert width % (32 // bits) == 0 and padded.shape[1] == groups * width > k  # padded: ragged groups
    qw, s = pack_int_weight(padded, bits).to(DEVICE), scales.t().contiguous().to(DEVICE)
    zz, p = (z.t().contiguous().to(DEVICE) if zeros else None), perm.int().to(DEVICE)
    x = torch.randn(m, k, generator=gen).to(DEVICE)
    expected = x.double().cpu() @ w.t()
    assert rel_err(dequantize_int_weight(qw, s, zz, bits, width, "int", p), w) < 1e-6
    assert rel_err(int_weight_matmul_ref(x, qw, s, zz, bits, width, "int", p), expected) < 1e-5
    assert rel_err(tiw.int_weight_matmul_triton(x, qw, s, zz, bits, width, "int", p), expected) < 1e-5
    monkeypatch.setattr(tiw, "DEQUANT_MM_MIN_M", 2)  # the large-M path
    assert rel_err(tiw.int_weight_matmul_triton(x, qw, s, zz, bits, width, "int", p), expected) < 1e-5


def test_act_order_zero_points_must_be_codes_to_pad():
    from forgellm.errors import ModelLoadError
    from forgellm.quantization.act_order import group_sorted_columns

    codes = torch.zeros(2, 6, dtype=torch.int32)
    g_idx = torch.tensor([0, 1, 0, 1, 1, 1])
    with pytest.raises(ModelLoadError, match="act-order zero points must be integer codes"):
        group_sorted_columns(codes, g_idx, torch.full((2, 2), 7.5), 4, "layer")
    with pytest.raises(ModelLoadError, match="g_idx names groups outside 0..1"):
        group_sorted_columns(codes, g_idx + 1, torch.full((2, 2), 7.0), 4, "layer")
