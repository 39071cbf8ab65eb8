"""FP8 W8A8 kernels at Llama-3.1-8B shapes on the GPU: the compiled Triton quantizers (bit for bit)
and GEMM, and torch._scaled_mm through fp8_linear's wrapper, against the references; fp8_linear
captured in a CUDA graph and replayed on new inputs.

Triton modules are imported inside the tests (see tests/gpu/test_gpu_kernels.py for why).
"""

from __future__ import annotations

import importlib

import pytest
import torch

from forgellm.kernels.fp8_gemm import fp8_matmul_ref
from forgellm.kernels.fp8_quant import (
    quantize_fp8_per_token_group_ref,
    quantize_fp8_per_token_ref,
    quantize_fp8_static_ref,
    quantize_fp8_weight,
)

pytestmark = pytest.mark.gpu

BF16 = torch.bfloat16
SHAPES = [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)]  # (K, N): qkv, o, gate|up, down
MS = [1, 7, 16, 128, 2048]
STRATEGIES = [(w, a) for w in ("tensor", "channel", "block") for a in ("token", "group", "static")]
_weights: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def fp8_linear_module():
    """forgellm.kernels.fp8_linear the module (the package attribute of that name is the function)."""
    return importlib.import_module("forgellm.kernels.fp8_linear")


def weight(k: int, n: int, strategy: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A random [n, k] weight quantized with `strategy`, made once per shape and strategy."""
    key = (k, n, strategy)
    if key not in _weights:
        generator = torch.Generator(device="cuda").manual_seed(k + n)
        w = torch.randn(n, k, device="cuda", generator=generator) * k**-0.5
        _weights[key] = quantize_fp8_weight(w, strategy)
    return _weights[key]


def activations(m: int, k: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(m, k, device="cuda", generator=generator).to(BF16)


def quantize_ref(x: torch.Tensor, act_strategy: str):
    if act_strategy == "token":
        return quantize_fp8_per_token_ref(x)
    if act_strategy == "group":
        return quantize_fp8_per_token_group_ref(x, 128)
    return quantize_fp8_static_ref(x, x.float().abs().amax() / 448)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def capture(run) -> tuple:  # noqa: ANN001
    """(graph, its output) of `run`, compiled and warmed up on a side stream outside the capture."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = run()
    return graph, static_y


@pytest.mark.parametrize("m, k", [(1, 4096), (7, 14336), (2048, 4096), (2048, 14336)])
def test_quantizers_match_reference_bits(m: int, k: int) -> None:
    from forgellm.kernels.triton_fp8_quant import (
        quantize_fp8_per_token_group_triton,
        quantize_fp8_per_token_triton,
        quantize_fp8_static_triton,
    )

    x = activations(m, k, seed=m) * 3
    x[0, :130] = 0  # a zero group (and, at M=1, part of the row)
    scale = torch.tensor(0.01, device="cuda")  # saturates the tails
    pairs = [
        (quantize_fp8_per_token_triton(x), quantize_fp8_per_token_ref(x)),
        (quantize_fp8_per_token_group_triton(x, 128), quantize_fp8_per_token_group_ref(x, 128)),
        (quantize_fp8_static_triton(x, scale), quantize_fp8_static_ref(x, scale)),
    ]
    for (q, s), (q_ref, s_ref) in pairs:
        assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))
        assert torch.equal(s, s_ref)


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("weight_strategy, act_strategy", STRATEGIES)
@pytest.mark.parametrize("k, n", SHAPES)
def test_triton_gemm(k: int, n: int, weight_strategy: str, act_strategy: str, m: int) -> None:
    from forgellm.kernels.triton_fp8_gemm import fp8_matmul_triton

    w_q, w_scale = weight(k, n, weight_strategy)
    x_q, x_scale = quantize_ref(activations(m, k, seed=m), act_strategy)
    bias = torch.randn(n, device="cuda").to(BF16) if m == 7 else None
    out = fp8_matmul_triton(x_q, x_scale, w_q, w_scale, BF16, bias)
    assert rel_err(out, fp8_matmul_ref(x_q, x_scale, w_q, w_scale, torch.float32, bias)) < 5e-3


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("weight_strategy", ["tensor", "channel"])
@pytest.mark.parametrize("act_strategy", ["token", "static"])
@pytest.mark.parametrize("k, n", SHAPES)
def test_scaled_mm(k: int, n: int, act_strategy: str, weight_strategy: str, m: int) -> None:
    w_q, w_scale = weight(k, n, weight_strategy)
    x_q, x_scale = quantize_ref(activations(m, k, seed=m), act_strategy)
    bias = torch.randn(n, device="cuda").to(BF16) if m == 7 else None
    out = fp8_linear_module().scaled_mm_fp8(x_q, x_scale, w_q, w_scale, BF16, bias)
    assert out.shape == (m, n)
    assert rel_err(out, fp8_matmul_ref(x_q, x_scale, w_q, w_scale, torch.float32, bias)) < 5e-3


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("k, n", SHAPES)
def test_scaled_mm_blockwise(k: int, n: int, m: int) -> None:
    """cuBLASLt's 128x128 weight blocks with 1x128 activation groups (off in fp8_linear until measured)."""
    w_q, w_scale = weight(k, n, "block")
    x_q, x_scale = quantize_ref(activations(m, k, seed=m), "group")
    try:
        out = fp8_linear_module().scaled_mm_fp8(x_q, x_scale, w_q, w_scale, BF16)
    except (RuntimeError, ValueError, NotImplementedError) as exc:
        pytest.skip(f"this torch has no blockwise _scaled_mm (keep SCALED_MM_MIN_M_BLOCKWISE = None): {exc}")
    assert rel_err(out, fp8_matmul_ref(x_q, x_scale, w_q, w_scale, torch.float32)) < 5e-3


@pytest.mark.parametrize("m", [1, 16, 2048])
@pytest.mark.parametrize(
    "weight_strategy, act_strategy", [("channel", "token"), ("block", "group"), ("tensor", "static")]
)
def test_fp8_linear_against_reference(weight_strategy: str, act_strategy: str, m: int) -> None:
    from forgellm import kernels

    k, n = 4096, 6144
    w_q, w_scale = weight(k, n, weight_strategy)
    x = activations(m, k, seed=3).view(m, 1, k)
    input_scale = x.float().abs().amax() / 448 if act_strategy == "static" else None
    args = dict(input_scale=input_scale, weight_strategy=weight_strategy, act_strategy=act_strategy)
    y = kernels.fp8_linear(x, w_q, w_scale, **args)
    assert y.shape == (m, 1, n) and y.dtype == BF16
    assert rel_err(y, fp8_linear_module().fp8_linear_ref(x, w_q, w_scale, **args)) < 5e-3


@pytest.mark.parametrize("m", [1, 256])  # Triton at decode size; _scaled_mm (rowwise) above the threshold
@pytest.mark.parametrize(
    "weight_strategy, act_strategy", [("channel", "token"), ("block", "group"), ("tensor", "static")]
)
def test_fp8_linear_cuda_graph(weight_strategy: str, act_strategy: str, m: int) -> None:
    """Captured once, replayed on new activations: the same results as eager calls (no host syncs inside)."""
    from forgellm import kernels

    k, n = 4096, 4096
    w_q, w_scale = weight(k, n, weight_strategy)
    bias = torch.randn(n, device="cuda").to(BF16)
    input_scale = torch.tensor(0.02, device="cuda") if act_strategy == "static" else None
    args = dict(input_scale=input_scale, weight_strategy=weight_strategy, act_strategy=act_strategy, bias=bias)
    static_x = activations(m, k, seed=10)

    def run() -> torch.Tensor:
        return kernels.fp8_linear(static_x, w_q, w_scale, **args)

    graph, static_y = capture(run)
    for seed in (11, 12):
        static_x.copy_(activations(m, k, seed=seed))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_y, run())


@pytest.mark.parametrize(
    "weight_strategy, act_strategy", [("channel", "token"), ("block", "group"), ("tensor", "static")]
)
@pytest.mark.parametrize("k, n", [(4096, 4096), (4096, 14336)])
def test_triton_gemm_split_k_summed_in_kernel(k: int, n: int, weight_strategy: str, act_strategy: str) -> None:
    """M = 1 with a layer's tile counters: the last split of each tile sums the partials (+ bias), the two-kernel
    result bit for bit (same order of summation), twice (the counters are back to zero), and the reference's."""
    from forgellm.kernels.triton_fp8_gemm import fp8_matmul_triton, pick_config
    from forgellm.kernels.triton_utils import num_sms, split_k_counters

    w_q, w_scale = weight(k, n, weight_strategy)
    x_q, x_scale = quantize_ref(activations(1, k, seed=1), act_strategy)
    k_group = 128 if weight_strategy == "block" else None
    assert pick_config(1, n, k, k_group, num_sms(x_q.device)).split_k > 1
    counters = split_k_counters(x_q.device)
    for bias in (None, torch.randn(n, device="cuda").to(BF16)):
        args = (x_q, x_scale, w_q, w_scale, BF16, bias)
        two_kernels = fp8_matmul_triton(*args)
        for _ in range(2):
            fused = fp8_matmul_triton(*args, split_k_counters=counters)
            assert torch.equal(fused, two_kernels)
            assert not counters.any()
        assert rel_err(fused, fp8_matmul_ref(x_q, x_scale, w_q, w_scale, torch.float32, bias)) < 5e-3


@pytest.mark.parametrize("weight_strategy, act_strategy", [("channel", "token"), ("block", "group")])
def test_fp8_linear_split_k_in_kernel_cuda_graph(weight_strategy: str, act_strategy: str) -> None:
    """fp8_linear at M = 1 with a layer's counters, captured and replayed twice: the same result each time, the
    eager two-kernel one, and the counters back at zero (no memset between replays)."""
    from forgellm import kernels
    from forgellm.kernels.triton_utils import split_k_counters

    k, n = 4096, 14336
    w_q, w_scale = weight(k, n, weight_strategy)
    args = dict(weight_strategy=weight_strategy, act_strategy=act_strategy, bias=torch.randn(n, device="cuda").to(BF16))
    static_x = activations(1, k, seed=10)
    counters = split_k_counters(static_x.device)

    def run() -> torch.Tensor:
        return kernels.fp8_linear(static_x, w_q, w_scale, split_k_counters=counters, **args)

    graph, static_y = capture(run)
    static_x.copy_(activations(1, k, seed=11))
    replays = []
    for _ in range(2):
        graph.replay()
        replays.append(static_y.clone())
    eager = kernels.fp8_linear(static_x, w_q, w_scale, **args)  # the two-kernel path
    torch.cuda.synchronize()
    assert torch.equal(replays[0], replays[1]) and torch.equal(replays[0], eager)
    assert not counters.any()
