"""FP8 W8A8 in the Triton interpreter at tiny shapes: quantization references against independent math; Triton
quantizers (bit for bit) and GEMM (every strategy pair, odd M/N/K, bias, forced tiles, split-K summed by a second
kernel or in the GEMM); fp8_linear, both paths."""

from __future__ import annotations

import importlib
import itertools

import pytest
import torch

pytest.importorskip("triton")

from forgellm import kernels  # noqa: E402
from forgellm.kernels import triton_fp8_gemm  # noqa: E402
from forgellm.kernels.fp8_gemm import fp8_matmul_ref  # noqa: E402
from forgellm.kernels.fp8_linear import fp8_gemm_backend, fp8_linear_ref, scaled_mm_fp8  # noqa: E402
from forgellm.kernels.fp8_quant import (  # noqa: E402
    FP8_DTYPE,
    FP8_MIN_SCALE,
    dequantize_fp8,
    quantize_fp8_per_token_group_ref,
    quantize_fp8_per_token_ref,
    quantize_fp8_static_ref,
    quantize_fp8_weight,
)
from forgellm.kernels.triton_fp8_gemm import Fp8GemmConfig, fp8_matmul_triton, pick_config  # noqa: E402
from forgellm.kernels.triton_fp8_quant import (  # noqa: E402
    quantize_fp8_per_token_group_triton,
    quantize_fp8_per_token_triton,
    quantize_fp8_static_triton,
)
from forgellm.kernels.triton_utils import SPLIT_K_MAX_PROGRAMS_PER_SM, split_k_counters  # noqa: E402

# The package's fp8_linear attribute is the function; the module (its thresholds) comes from sys.modules.
fp8_linear_module = importlib.import_module("forgellm.kernels.fp8_linear")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
N, K = 40, 200  # K = 128 + 72: a partial 128-block and group
LINEAR_CASES = [("channel", "token"), ("block", "group"), ("tensor", "static")]  # (weight, activation)
SCALED_MM_CASES = [("channel", "token"), ("tensor", "static"), ("tensor", "token")]
BAD_ARGS = [("channel", "static", "input_scale"), ("x", "token", "weight_"), ("channel", "row", "act_")]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the interpreter's numpy use


def randn(*shape, dtype=torch.float32, seed=0):
    """Seeded normal values on the test device."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


def activations(m, k=K, dtype=torch.bfloat16, seed=0):
    """Rows of very different magnitudes, one of them all zeros (when there are 3 rows or more)."""
    x = randn(m, k, seed=seed) * torch.logspace(-3, 2, m, device=DEVICE)[:, None]
    if m >= 3:
        x[1] = 0
    return x.to(dtype)


def same_bits(a, b):
    """Identical fp8 bytes (so -0 and +0 differ too)."""
    assert a.dtype == b.dtype == FP8_DTYPE and a.shape == b.shape
    assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def rel_err(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def quantize_ref(x, act_strategy, group=128):
    """x quantized by the reference of act_strategy; "static" with a scale calibrated on x itself."""
    if act_strategy == "token":
        return quantize_fp8_per_token_ref(x)
    if act_strategy == "group":
        return quantize_fp8_per_token_group_ref(x, group)
    return quantize_fp8_static_ref(x, x.float().abs().amax() / 448)


# --- references against independent math ---


def test_per_token_ref_scales_zero_rows_and_rounding():
    x = activations(5)
    x_q, scale = quantize_fp8_per_token_ref(x)
    amax = torch.stack([row.float().abs().max() for row in x])
    # amax times float32(1/448) (as torch on CUDA divides by a scalar), not a true division
    expected = torch.where(amax > 0, amax * torch.tensor(1 / 448), torch.full_like(amax, FP8_MIN_SCALE))
    assert scale.shape == (5, 1) and torch.equal(scale[:, 0], expected)  # float32 like expected
    # The zero row stays zero; every other row's largest element lands exactly on the fp8 maximum.
    assert x_q.float().abs().amax(dim=1).tolist() == [448, 0, 448, 448, 448]
    # Round to nearest e4m3: error <= half an ulp (2^-4 relative), or half the subnormal step 2^-10.
    back = x_q.float() * scale
    bound = torch.maximum(x.float().abs() * 2**-4, 2**-10 * scale)
    assert torch.all((back - x.float()).abs() <= bound)


def test_per_token_group_ref_partial_last_group():
    x = activations(4)
    x_q, scale = quantize_fp8_per_token_group_ref(x, 128)
    assert scale.shape == (4, 2)
    for r, (g, cols) in itertools.product(range(4), enumerate((slice(0, 128), slice(128, 200)))):
        amax = x[r, cols].float().abs().max()
        assert scale[r, g] == (amax * torch.tensor(1 / 448) if amax > 0 else FP8_MIN_SCALE)
        assert x_q[r, cols].float().abs().max() == (448 if amax > 0 else 0)


def test_static_ref_saturates_at_448_and_keeps_the_scale():
    x = torch.tensor([[-1e6, -3.0, 0.0, 0.004, 2.2, 5.0, 1e6]], device=DEVICE)
    scale = torch.tensor(0.01, device=DEVICE)
    x_q, s = quantize_fp8_static_ref(x, scale)
    assert s.dim() == 0 and s == scale
    assert x_q.float().tolist() == [[-448.0, -288.0, 0.0, 0.40625, 224.0, 448.0, 448.0]]


@pytest.mark.parametrize("strategy", ["tensor", "channel", "block"])
def test_weight_quantization_roundtrip(strategy):
    w = randn(N, K, seed=3) * torch.linspace(0.01, 3, N, device=DEVICE)[:, None]
    w_q, w_scale = quantize_fp8_weight(w, strategy, block=(16, 64))
    assert w_q.dtype == FP8_DTYPE and w_scale.dtype == torch.float32
    expected_shape = {"tensor": (), "channel": (N, 1), "block": (3, 4)}[strategy]
    assert tuple(w_scale.shape) == expected_shape
    if strategy == "block":  # amax over each 16x64 block, by loops
        for i, j in itertools.product(range(3), range(4)):
            assert w_scale[i, j] == w[16 * i : 16 * i + 16, 64 * j : 64 * j + 64].abs().max() / 448
    back = dequantize_fp8(w_q, w_scale, (16, 64))
    # Round to nearest: 2^-4 relative per element at worst; a per-tensor scale also sends small rows subnormal.
    assert rel_err(back, w) < (0.05 if strategy == "tensor" else 0.03)
    step = dequantize_fp8(torch.ones_like(w), w_scale, (16, 64))  # each element's scale
    assert torch.all((back - w).abs() <= w.abs() * 2**-4 + 2**-10 * step)


# --- Triton quantizers against the references ---


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_triton_quantizers_match_reference_bits(dtype):
    x = activations(5, dtype=dtype, seed=1).view(5, 1, K)  # 3-D input: leading dims are kept
    scale_05 = 0.05 * torch.ones(1)  # a [1] scale (compressed-tensors' layout) comes back 0-d
    for triton_fn, ref_fn in [
        (quantize_fp8_per_token_triton, quantize_fp8_per_token_ref),
        (quantize_fp8_per_token_group_triton, quantize_fp8_per_token_group_ref),
        (lambda t: quantize_fp8_static_triton(t, torch.tensor(0.05)), lambda t: quantize_fp8_static_ref(t, scale_05)),
    ]:
        (q, s), (q_ref, s_ref) = triton_fn(x), ref_fn(x)
        same_bits(q, q_ref)
        assert s.shape == s_ref.shape and torch.equal(s, s_ref)
    narrow = x[..., :48]  # a strided view; a group wider than the row is the whole row
    same_bits(quantize_fp8_per_token_group_triton(narrow, 128)[0], quantize_fp8_per_token_ref(narrow)[0])


def test_triton_rounding_on_every_fp8_value_and_midpoint():
    """Every finite e4m3 value, the midpoints between neighbours (ties to even) and values just off them."""
    values = torch.arange(256, dtype=torch.uint8).view(FP8_DTYPE).float()
    values = values[values.isfinite()].unique()
    mids = (values[1:] + values[:-1]) / 2
    x = torch.cat([values, mids, mids * (1 + 2**-20), mids * (1 - 2**-20), torch.tensor([500.0, -1e9])])
    x = x.to(DEVICE).view(1, -1)
    one = torch.tensor(1.0, device=DEVICE)
    same_bits(quantize_fp8_static_triton(x, one)[0], quantize_fp8_static_ref(x, one)[0])


# --- Triton GEMM against the reference ---


def quantized_operands(weight_strategy, act_strategy, m, block=(128, 128), seed=0):
    w_q, w_scale = quantize_fp8_weight(randn(N, K, seed=seed + 7), weight_strategy, block)
    return *quantize_ref(activations(m, seed=seed), act_strategy, block[1]), w_q, w_scale


@pytest.mark.parametrize("m", [1, 3, 17])
@pytest.mark.parametrize("act_strategy", ["token", "group", "static"])
@pytest.mark.parametrize("weight_strategy", ["tensor", "channel", "block"])
def test_triton_gemm_every_strategy(weight_strategy, act_strategy, m):
    x_q, x_scale, w_q, w_scale = quantized_operands(weight_strategy, act_strategy, m, seed=m)
    bias = randn(N, seed=5) if m != 3 else None
    out = fp8_matmul_triton(x_q, x_scale, w_q, w_scale, torch.float32, bias)
    ref = fp8_matmul_ref(x_q, x_scale, w_q, w_scale, torch.float32, bias)
    assert out.shape == (m, N) and out.dtype == torch.float32
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_triton_gemm_half_outputs_and_small_blocks(out_dtype):
    """16x64 weight blocks (3 along N, 4 along K) with per-group activations of 64, a bf16 bias."""
    block = (16, 64)
    x_q, x_scale, w_q, w_scale = quantized_operands("block", "group", 5, block)
    bias = randn(N, dtype=out_dtype, seed=6)
    out = fp8_matmul_triton(x_q, x_scale, w_q, w_scale, out_dtype, bias, block)
    ref = fp8_matmul_ref(x_q, x_scale, w_q, w_scale, out_dtype, bias, block)
    assert out.dtype == out_dtype
    assert rel_err(out, ref) < 1e-2  # the interpreter truncates to bf16 where the reference rounds


# split-K with swapped tiles, split-K with plain tiles, large-M tiles (M over 2 tiles)
CONFIGS = [Fp8GemmConfig(16, 32, 32, 3, swap_ab=True), Fp8GemmConfig(16, 16, 64, 2), Fp8GemmConfig(32, 64, 128)]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("weight_strategy, act_strategy", [("block", "group"), ("channel", "token")])
def test_triton_gemm_forced_configs(config, weight_strategy, act_strategy):
    x_q, x_scale, w_q, w_scale = quantized_operands(weight_strategy, act_strategy, 33, seed=2)
    bias = randn(N, seed=8)
    out = fp8_matmul_triton(x_q, x_scale, w_q, w_scale, torch.float32, bias, config=config)
    assert rel_err(out, fp8_matmul_ref(x_q, x_scale, w_q, w_scale, torch.float32, bias)) < 1e-5


# M, strategies, config, bias: K = 200 (a partial last K step), N = 40 (a partial last tile)
FUSED_CASES = [
    (1, ("block", "group"), Fp8GemmConfig(16, 32, 32, 3, swap_ab=True), True),  # 3 splits of 3, 3 and 1 steps
    (1, ("channel", "token"), Fp8GemmConfig(16, 32, 32, 3, swap_ab=True), False),
    (3, ("channel", "token"), Fp8GemmConfig(16, 16, 64, 2), True),  # plain tiles, 3 along N
    (3, ("tensor", "static"), Fp8GemmConfig(16, 16, 64, 2), False),
]


@pytest.mark.parametrize("m, strategies, config, with_bias", FUSED_CASES)
def test_split_k_summed_in_kernel(m, strategies, config, with_bias, monkeypatch):
    """With counters each tile's last split sums the partials (+ bias): the two-kernel result bit for bit, twice
    (the counters are back to zero after each call), and no second launch."""
    x_q, x_scale, w_q, w_scale = quantized_operands(*strategies, m, seed=m + 20)
    bias = randn(N, dtype=torch.bfloat16, seed=9) if with_bias else None
    out_dtype = torch.bfloat16 if with_bias else torch.float32
    args = (x_q, x_scale, w_q, w_scale, out_dtype, bias)
    two_kernels = fp8_matmul_triton(*args, config=config)
    monkeypatch.setattr(triton_fp8_gemm, "_split_k_reduce_kernel", None)  # the fused path must not launch it
    counters = torch.zeros(4, dtype=torch.int32, device=DEVICE)
    for _ in range(2):
        out = fp8_matmul_triton(*args, config=config, split_k_counters=counters)
        assert torch.equal(out, two_kernels) and not counters.any()
    assert out.dtype == out_dtype
    assert rel_err(out, fp8_matmul_ref(*args)) < (1e-2 if with_bias else 1e-5)  # bf16: the interpreter truncates


def test_split_k_counters_of_a_layer_and_their_checks():
    """A layer's counters with pick_config's own split-K, and counters that do not fit refused."""
    k = 2048  # 8 K steps of 256: pick_config splits them in two
    w_q, w_scale = quantize_fp8_weight(randn(N, k, seed=4), "channel")
    x_q, x_scale = quantize_fp8_per_token_ref(activations(1, k=k))
    assert pick_config(1, N, k, None, 4).split_k == 2  # 4: the interpreter's nominal SMs
    counters = split_k_counters(DEVICE)
    out = fp8_matmul_triton(x_q, x_scale, w_q, w_scale, torch.float32, split_k_counters=counters)
    assert torch.equal(out, fp8_matmul_triton(x_q, x_scale, w_q, w_scale, torch.float32)) and not counters.any()
    x_q, x_scale, w_q, w_scale = quantized_operands("channel", "token", 1, seed=4)
    # pick_config splits only grids of fewer tiles than programs-per-SM x SMs: the layer's counters cover them.
    assert triton_fp8_gemm.SPLIT_K_PROGRAMS_PER_SM <= SPLIT_K_MAX_PROGRAMS_PER_SM
    config = Fp8GemmConfig(16, 16, 64, 2)  # three tiles
    for bad in (torch.zeros(2, dtype=torch.int32), torch.zeros(3, dtype=torch.float32)):
        with pytest.raises(ValueError, match="split_k_counters"):
            fp8_matmul_triton(x_q, x_scale, w_q, w_scale, torch.float32, config=config, split_k_counters=bad.to(DEVICE))


def test_tile_choice_at_llama_8b_shapes():
    """Decode streams the weight through swapped tiles, split over K until ~2 programs per SM (132 SMs)."""
    qkv = pick_config(1, 6144, 4096, None, 132)
    assert qkv.swap_ab and qkv.block_m == 16 and qkv.split_k == 3  # 96 tiles
    assert pick_config(16, 28672, 4096, None, 132).split_k == 1  # 448 tiles fill the GPU already
    down = pick_config(4, 4096, 14336, 128, 132)
    assert down.block_k == 128 and down.split_k == 5  # block scales: a K step inside one 128-block
    assert pick_config(64, 4096, 4096, None, 132).block_m == 64
    large = pick_config(2048, 4096, 4096, None, 132)
    assert not large.swap_ab and large.block_m == 128 and large.split_k == 1
    assert pick_config(256, 4096, 4096, None, 132).split_k == 3  # 64 big tiles: K split to fill one wave


def test_triton_gemm_refuses_mismatched_scales():
    x_q, x_scale, w_q, _ = quantized_operands("channel", "token", 3)
    with pytest.raises(ValueError, match="w_scale"):
        fp8_matmul_triton(x_q, x_scale, w_q, torch.ones(N + 1, 1), torch.float32)
    with pytest.raises(ValueError, match="block_k"):
        fp8_matmul_triton(x_q, x_scale, w_q, torch.ones(1, 2), torch.float32, config=Fp8GemmConfig(16, 16, 256))


# --- fp8_linear ---


@pytest.mark.parametrize("weight_strategy, act_strategy", LINEAR_CASES)
def test_fp8_linear_cpu_is_the_reference_composition(weight_strategy, act_strategy):
    x = activations(6).view(2, 3, K)
    w_q, w_scale = quantize_fp8_weight(randn(N, K, seed=9), weight_strategy)
    input_scale = x.float().abs().amax().cpu() / 448 if act_strategy == "static" else None  # as calibrated
    bias = randn(N, dtype=torch.bfloat16, seed=4)
    args = dict(input_scale=input_scale, weight_strategy=weight_strategy, act_strategy=act_strategy, bias=bias)
    y = kernels.fp8_linear(x.cpu(), w_q.cpu(), w_scale.cpu(), **args)
    x_q, x_scale = quantize_ref(x.reshape(6, K).cpu(), act_strategy)
    expected = fp8_matmul_ref(x_q, x_scale, w_q.cpu(), w_scale.cpu(), torch.bfloat16, bias.cpu())
    assert y.shape == (2, 3, N) and y.dtype == torch.bfloat16
    assert torch.equal(y.view(6, N), expected)
    exact = torch.nn.functional.linear(x.float().cpu(), dequantize_fp8(w_q, w_scale).cpu(), bias.float().cpu())
    assert rel_err(y.float(), exact) < 0.05  # the activation's quantization costs little


@pytest.mark.parametrize("weight, act, match", BAD_ARGS)
def test_fp8_linear_refuses_bad_arguments(weight, act, match):
    w_q, w_scale = quantize_fp8_weight(randn(N, K), "channel")
    with pytest.raises(ValueError, match=match):
        kernels.fp8_linear(activations(2), w_q, w_scale, weight_strategy=weight, act_strategy=act)


def test_gemm_backend_choice(monkeypatch):
    monkeypatch.setattr(fp8_linear_module, "SCALED_MM_MIN_M_ROWWISE", 32)
    monkeypatch.setattr(fp8_linear_module, "SCALED_MM_MIN_M_TENSORWISE", 64)
    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    assert fp8_gemm_backend(16, 4096, 4096, "channel", "token", bf16, False) == "triton"
    assert fp8_gemm_backend(32, 4096, 4096, "channel", "token", bf16, False) == "scaled_mm"
    assert fp8_gemm_backend(32, 4096, 4096, "tensor", "static", bf16, False) == "triton"
    assert fp8_gemm_backend(64, 4096, 4096, "tensor", "static", fp16, True) == "scaled_mm"
    assert fp8_gemm_backend(4096, 4096, 4096, "channel", "token", fp16, False) == "triton"  # rowwise: bf16 only
    assert fp8_gemm_backend(4096, 4096, 4096, "tensor", "static", fp32, True) == "triton"  # no bias with fp32
    assert fp8_gemm_backend(4096, 4104, 4096, "tensor", "static", bf16, False) == "triton"  # N % 16
    # block weights with group activations go to cuBLASLt only once a threshold is set (bf16, no bias)
    assert fp8_gemm_backend(4096, 4096, 4096, "block", "group", bf16, False) == "triton"
    monkeypatch.setattr(fp8_linear_module, "SCALED_MM_MIN_M_BLOCKWISE", 256)
    assert fp8_gemm_backend(256, 4096, 4096, "block", "group", bf16, False) == "scaled_mm"
    assert fp8_gemm_backend(256, 4096, 4096, "block", "group", bf16, True) == "triton"
    assert fp8_gemm_backend(256, 4096, 4096, "block", "group", bf16, False, block=(64, 64)) == "triton"
    monkeypatch.setattr(fp8_linear_module, "SCALED_MM_MIN_M_ROWWISE", None)
    assert fp8_gemm_backend(10**6, 4096, 4096, "channel", "token", bf16, False) == "triton"


@pytest.mark.parametrize("weight_strategy, act_strategy", SCALED_MM_CASES)
@pytest.mark.parametrize("m_multiple", [1, 16])
def test_scaled_mm_wrapper_on_cpu(weight_strategy, act_strategy, m_multiple, monkeypatch):
    """The scale layouts (broadcasts to rowwise, [1, N]) and row padding, through torch's CPU _scaled_mm."""
    monkeypatch.setattr(fp8_linear_module, "SCALED_MM_M_MULTIPLE", m_multiple)
    n, k = 48, 64
    w_q, w_scale = quantize_fp8_weight(torch.randn(n, k), weight_strategy)
    x_q, x_scale = quantize_ref(activations(5, k=k).cpu(), act_strategy)
    bias = torch.randn(n).bfloat16()
    y = scaled_mm_fp8(x_q, x_scale, w_q, w_scale, torch.bfloat16, bias)
    assert y.shape == (5, n)
    assert rel_err(y, fp8_matmul_ref(x_q, x_scale, w_q, w_scale, torch.float32, bias)) < 1e-2


@pytest.mark.parametrize("threshold", [1, 10**9])  # every M to _scaled_mm / none
@pytest.mark.parametrize("weight_strategy, act_strategy", LINEAR_CASES)
def test_fp8_linear_gpu_plumbing_on_cpu(weight_strategy, act_strategy, threshold, monkeypatch):
    """The CUDA path of fp8_linear (quantize, choose, run, reshape) with CPU tensors, whose ops are references."""
    monkeypatch.setattr(fp8_linear_module, "SCALED_MM_MIN_M_ROWWISE", threshold)
    monkeypatch.setattr(fp8_linear_module, "SCALED_MM_MIN_M_TENSORWISE", threshold)
    n, k = 48, 256
    x = activations(6, k=k).view(3, 2, k).cpu()
    w_q, w_scale = quantize_fp8_weight(torch.randn(n, k), weight_strategy)
    input_scale = x.float().abs().amax() / 448 if act_strategy == "static" else None
    args = dict(input_scale=input_scale, weight_strategy=weight_strategy, act_strategy=act_strategy, block=(128, 128))
    bias = torch.randn(n).bfloat16()
    y = fp8_linear_module._fp8_linear_cuda(
        x, w_q, w_scale, bias=bias, split_k_counters=split_k_counters(x.device), **args
    )
    assert y.shape == (3, 2, n) and y.dtype == torch.bfloat16
    assert rel_err(y, fp8_linear_ref(x, w_q, w_scale, bias=bias, **args)) < 1e-2
