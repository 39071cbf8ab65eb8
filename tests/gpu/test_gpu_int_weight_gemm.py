"""The weight-only quantized GEMM on the GPU at Llama-3.1-8B shapes: Triton (fused kernel and dequantize + mm)
against the pure-torch reference, and the M = 1 call replayed from a CUDA graph.

Triton modules are imported inside the tests (see test_gpu_kernels.py for why).
"""

from __future__ import annotations

import functools

import pytest
import torch

pytestmark = pytest.mark.gpu

BF16 = torch.bfloat16
# (K, N): fused q/k/v, o, fused gate/up, down, lm_head
SHAPES = [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096), (4096, 128256)]
ROWS = [1, 4, 16, 128, 1024]
# name: (bits, group size (0 = per-channel), zeros, value_type, perm)
KINDS = {
    "int4-g128": (4, 128, False, "int", False),
    "int8-channel": (8, 0, False, "int", False),
    "e2m1-g16": (4, 16, False, "e2m1", False),
    "int4-g128-zeros-perm": (4, 128, True, "int", True),
}
CASES = [(kind, k, n, m) for kind in KINDS for k, n in SHAPES for m in ROWS]
# Asymmetric act-order weights only on the two input widths: the rest is the same code.
CASES = [c for c in CASES if c[0] != "int4-g128-zeros-perm" or c[2] == 4096]


@functools.lru_cache(maxsize=2)
def weights(kind: str, k: int, n: int) -> tuple:
    """Random packed weight (any bit pattern is a valid code), scales, zeros and perm on the GPU."""
    bits, group, has_zeros, value_type, has_perm = KINDS[kind]
    group = group or k
    gen = torch.Generator(device="cuda").manual_seed(k + n + bits)
    qweight = torch.randint(-(2**31), 2**31, (k * bits // 32, n), generator=gen, device="cuda", dtype=torch.int32)
    scales = (torch.rand(k // group, n, generator=gen, device="cuda") * 0.01 + 0.001).to(BF16)
    zeros = None
    if has_zeros:
        zeros = torch.randint(0, 1 << bits, (k // group, n), generator=gen, device="cuda").to(BF16)
    perm = torch.randperm(k, generator=gen, device="cuda").int() if has_perm else None
    return qweight, scales, zeros, bits, group, value_type, perm


def assert_close(out: torch.Tensor, ref: torch.Tensor) -> None:
    """bf16 output: relative norm error under 1e-2 and no element off by 2% of the largest."""
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert torch.isfinite(out).all()
    diff = (out.double() - ref.double()).abs()
    assert (diff.norm() / ref.double().norm()).item() < 1e-2
    assert diff.max().item() <= 2e-2 * ref.double().abs().max().item()


@pytest.mark.parametrize("kind, k, n, m", CASES)
def test_int_weight_gemm_matches_reference(kind: str, k: int, n: int, m: int) -> None:
    from forgellm import kernels
    from forgellm.kernels.int_weight_gemm import int_weight_matmul_ref
    from forgellm.kernels.triton_int_weight_gemm import int_weight_dequant_mm_triton, int_weight_gemm_triton

    args = weights(kind, k, n)
    x = torch.randn(m, k, generator=torch.Generator(device="cuda").manual_seed(m), device="cuda").to(BF16)
    ref = int_weight_matmul_ref(x, *args)
    assert_close(kernels.int_weight_matmul(x, *args), ref)  # the dispatcher's choice for this M
    assert_close(int_weight_gemm_triton(x, *args), ref)  # the fused kernel at every M
    if m >= 16:
        assert_close(int_weight_dequant_mm_triton(x, *args), ref)


@pytest.mark.parametrize("kind, k, n", [("int4-g128", 4096, 6144), ("e2m1-g16", 14336, 4096)])
def test_int_weight_gemm_cuda_graph(kind: str, k: int, n: int) -> None:
    """Captured at M = 1 (split-K: two kernels and a partials buffer), replayed with new x: equal to eager."""
    from forgellm import kernels

    args = weights(kind, k, n)
    x = torch.zeros(1, k, device="cuda", dtype=BF16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile and warm up outside the capture
        for _ in range(2):
            kernels.int_weight_matmul(x, *args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = kernels.int_weight_matmul(x, *args)
    for seed in range(3):
        new_x = torch.randn(1, k, generator=torch.Generator(device="cuda").manual_seed(seed), device="cuda").to(BF16)
        x.copy_(new_x)
        graph.replay()
        eager = kernels.int_weight_matmul(new_x, *args)
        torch.cuda.synchronize()
        assert torch.equal(y, eager)  # no atomics: the split-K sum is deterministic


@pytest.mark.parametrize(
    "kind, k, n, m",
    [("int4-g128", 4096, 4096, 1), ("int4-g128", 4096, 14336, 1), ("int4-g128", 4096, 14336, 4),
     ("e2m1-g16", 14336, 4096, 1), ("int4-g128-zeros-perm", 4096, 14336, 1)],
)  # fmt: skip
def test_int_weight_gemm_split_k_summed_in_kernel(kind: str, k: int, n: int, m: int) -> None:
    """With a layer's tile counters the last slice of each tile sums the partials: the two-kernel result bit for
    bit (same order of summation), twice (the counters are back to zero after each call), and the reference's."""
    from forgellm.kernels.int_weight_gemm import int_weight_matmul_ref
    from forgellm.kernels.triton_int_weight_gemm import int_weight_gemm_triton, pick_config
    from forgellm.kernels.triton_utils import split_k_counters

    args = weights(kind, k, n)
    x = torch.randn(m, k, generator=torch.Generator(device="cuda").manual_seed(m), device="cuda").to(BF16)
    assert pick_config(m, n, k, args[3], args[4], x.device).split_k > 1
    counters = split_k_counters(x.device)
    two_kernels = int_weight_gemm_triton(x, *args)
    for _ in range(2):
        fused = int_weight_gemm_triton(x, *args, split_k_counters=counters)
        assert torch.equal(fused, two_kernels)
        assert not counters.any()
    assert_close(fused, int_weight_matmul_ref(x, *args))


@pytest.mark.parametrize("kind, k, n", [("int4-g128", 4096, 14336), ("e2m1-g16", 14336, 4096)])
def test_int_weight_gemm_split_k_in_kernel_cuda_graph(kind: str, k: int, n: int) -> None:
    """The in-kernel split-K sum captured at M = 1 (one launch, no memset) and replayed twice: the same result
    each time, the eager two-kernel one, and the counters back at zero."""
    from forgellm import kernels
    from forgellm.kernels.triton_utils import split_k_counters

    args = weights(kind, k, n)
    x = torch.zeros(1, k, device="cuda", dtype=BF16)
    counters = split_k_counters(x.device)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile and warm up outside the capture
        for _ in range(2):
            kernels.int_weight_matmul(x, *args, split_k_counters=counters)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = kernels.int_weight_matmul(x, *args, split_k_counters=counters)
    new_x = torch.randn(1, k, generator=torch.Generator(device="cuda").manual_seed(7), device="cuda").to(BF16)
    x.copy_(new_x)
    replays = []
    for _ in range(2):
        graph.replay()
        replays.append(y.clone())
    eager = kernels.int_weight_matmul(new_x, *args)  # the two-kernel path
    torch.cuda.synchronize()
    assert torch.equal(replays[0], replays[1]) and torch.equal(replays[0], eager)
    assert not counters.any()


@pytest.mark.parametrize("bits, zeros", [(4, True), (8, False)])
@pytest.mark.parametrize("m", [1, 16, 256])
def test_act_order_shard_with_ragged_groups(bits: int, zeros: bool, m: int) -> None:
    """A TP=2 rank's half of down_proj's act-order inputs (7168 of 14336 columns, 112 groups of 128, ragged):
    padded by quantization/act_order.py, the fused kernel (FMA, dot) and dequantize + mm give x @ W^T with W
    written from the definition."""
    from forgellm.kernels.int_weight_gemm import pack_int_weight
    from forgellm.kernels.triton_int_weight_gemm import int_weight_dequant_mm_triton, int_weight_gemm_triton
    from forgellm.quantization.act_order import group_sorted_columns

    gen = torch.Generator().manual_seed(bits + m)
    n, groups = 4096, 112
    g_idx = (torch.randperm(14336, generator=gen) // 128)[:7168]  # this rank's columns of a desc_act order
    codes = torch.randint(0, 1 << bits, (n, 7168), generator=gen, dtype=torch.int32)
    scales = (torch.rand(n, groups, generator=gen) * 0.01 + 0.001).to(BF16).float()  # as the kernel reads them
    z = torch.randint(0, 1 << bits, (n, groups), generator=gen).float() if zeros else None
    padded, perm, width = group_sorted_columns(codes, g_idx, z, bits, "down_proj")
    assert padded.shape[1] > 7168
    w = ((codes.float() - (z[:, g_idx] if zeros else 2.0 ** (bits - 1))) * scales[:, g_idx]).cuda()
    args = (
        pack_int_weight(padded, bits).cuda(), scales.t().contiguous().to("cuda", BF16),
        None if z is None else z.t().contiguous().to("cuda", BF16), bits, width, "int", perm.int().cuda(),
    )  # fmt: skip
    x = torch.randn(m, 7168, generator=gen).to("cuda", BF16)
    ref = (x.float() @ w.to(BF16).float().t()).to(BF16)
    assert_close(int_weight_gemm_triton(x, *args), ref)
    if m >= 16:
        assert_close(int_weight_dequant_mm_triton(x, *args), ref)
