"""Triton RMSNorm, fused add + RMSNorm, SiLU-and-mul, rotary and KV-cache write against their references.

CPU: under TRITON_INTERPRET=1 (tests/kernels/conftest.py). Odd sizes, strided views of a fused QKV
output, every GQA ratio, padding slots.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from forgellm import kernels  # noqa: E402
from forgellm.kernels.activation import silu_and_mul_ref  # noqa: E402
from forgellm.kernels.kv_cache import write_kv_cache_ref  # noqa: E402
from forgellm.kernels.norm import fused_add_rms_norm_ref, rms_norm_ref  # noqa: E402
from forgellm.kernels.rotary import apply_rotary_fp32_ref, apply_rotary_ref  # noqa: E402
from forgellm.kernels.triton_activation import silu_and_mul_triton  # noqa: E402
from forgellm.kernels.triton_kv_cache import write_kv_cache_triton  # noqa: E402
from forgellm.kernels.triton_norm import fused_add_rms_norm_triton, rms_norm_triton  # noqa: E402
from forgellm.kernels.triton_rotary import apply_rotary_fp32_triton, apply_rotary_triton  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 2e-3}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the interpreter's numpy use


def randn(*shape, dtype=torch.float32, seed=0):
    """Seeded normal values on the test device."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(DEVICE, dtype)


def assert_close(out, ref, dtype=None):
    """Same dtype and shape, relative error within the tolerance of `dtype` (default: ref's dtype).

    The interpreter rounds float32 -> bf16 by truncation (the GPU rounds to nearest), so a result
    that passed through bf16 gets bf16's tolerance even when it is returned in float32.
    """
    assert out.dtype == ref.dtype and out.shape == ref.shape
    err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    assert err < TOLERANCE[dtype or ref.dtype], err


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 33), (5, 33), (3, 4, 24), (2, 3, 2, 8)])
def test_rms_norm(dtype, shape):
    x, w = randn(*shape, dtype=dtype, seed=1), randn(shape[-1], dtype=dtype, seed=2)
    assert_close(rms_norm_triton(x, w, 1e-6), rms_norm_ref(x, w, 1e-6))


def test_rms_norm_float32_weight_and_strided_heads():
    """qk-norm on the [T, H, D] slice of a fused QKV output; an fp32 weight promotes like the reference."""
    qkv = randn(5, 6 * 12 + 2 * 2 * 12, dtype=torch.bfloat16, seed=3)
    q = qkv[:, : 6 * 12].view(5, 6, 12)
    w = randn(12, seed=4)
    assert_close(rms_norm_triton(q, w, 1e-5), rms_norm_ref(q, w, 1e-5), torch.bfloat16)
    assert_close(rms_norm_triton(q, w.bfloat16(), 1e-5), rms_norm_ref(q, w.bfloat16(), 1e-5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_add_rms_norm(dtype):
    x, res, w = randn(7, 40, dtype=dtype, seed=5), randn(7, 40, dtype=dtype, seed=6), randn(40, dtype=dtype, seed=7)
    normed, new_res = fused_add_rms_norm_triton(x, res, w, 1e-5)
    ref_normed, ref_res = fused_add_rms_norm_ref(x, res, w, 1e-5)
    assert_close(normed, ref_normed)
    assert_close(new_res, ref_res)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 2), (5, 2 * 37), (3, 2, 2 * 9), (4, 2 * 1100)])
def test_silu_and_mul(dtype, shape):
    x = randn(*shape, dtype=dtype, seed=8)
    assert_close(silu_and_mul_triton(x), silu_and_mul_ref(x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "num_heads, num_kv_heads, head_dim", [(4, 4, 8), (4, 2, 12), (8, 2, 16), (16, 2, 32), (6, 1, 64)]
)
def test_apply_rotary_on_qkv_views(dtype, num_heads, num_kv_heads, head_dim):
    """q and k as strided slices of one fused projection output, as the models pass them."""
    tokens = 5
    qkv = randn(tokens, (num_heads + 2 * num_kv_heads) * head_dim, dtype=dtype, seed=head_dim)
    q, k, _ = qkv.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    q, k = q.view(tokens, num_heads, head_dim), k.view(tokens, num_kv_heads, head_dim)
    angles = randn(tokens, head_dim // 2, seed=9) * 3
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    q_out, k_out = apply_rotary_triton(q, k, cos, sin)
    q_ref, k_ref = apply_rotary_ref(q, k, cos, sin)
    assert_close(q_out, q_ref)
    assert_close(k_out, k_ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_apply_rotary_fp32_math_on_vision_tower_views(dtype):
    """The vision towers' rotary: head_dim 80 (a padded half), q and k strided views of one qkv output,
    positions in the hundreds; float32 math rounded once, as transformers' vision rotary."""
    tokens, heads, head_dim = 7, 3, 80
    qkv = randn(tokens, 3, heads, head_dim, dtype=dtype, seed=11)
    q, k, _ = qkv.unbind(1)
    angles = (torch.arange(tokens)[:, None] * 97.0 + 300.0) * randn(1, head_dim // 2, seed=12).abs()
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    q_out, k_out = apply_rotary_fp32_triton(q, k, cos, sin)
    q_ref, k_ref = apply_rotary_fp32_ref(q, k, cos, sin)
    assert_close(q_out, q_ref)
    assert_close(k_out, k_ref)
    if dtype == torch.bfloat16:  # the fp32 path really differs from rounding every product to bf16
        assert not torch.equal(q_ref, apply_rotary_ref(q, k, cos, sin)[0])


@pytest.mark.parametrize(
    "cache_dtype, dtype",
    [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32)],
)
@pytest.mark.parametrize("block_size, head_dim", [(4, 12), (16, 16)])
def test_write_kv_cache(cache_dtype, dtype, block_size, head_dim):
    """Padding slots (-1) leave the cache alone; slots at block edges land where the reference puts them."""
    num_kv_heads, num_blocks = 3, 5
    kv = randn(6, 2 * num_kv_heads * head_dim, dtype=dtype, seed=10)
    k, v = (
        kv[:, : num_kv_heads * head_dim].view(6, num_kv_heads, head_dim),
        kv[:, num_kv_heads * head_dim :].view(6, num_kv_heads, head_dim),
    )
    last = num_blocks * block_size - 1
    slots = torch.tensor([block_size - 1, -1, block_size, 0, last, -1], device=DEVICE)
    caches = [
        torch.full((num_blocks, block_size, num_kv_heads, head_dim), -7.0, dtype=cache_dtype, device=DEVICE)
        for _ in range(4)
    ]
    write_kv_cache_triton(k, v, caches[0], caches[1], slots)
    write_kv_cache_ref(k, v, caches[2], caches[3], slots)
    if cache_dtype == dtype:
        assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])
    else:  # a converting write: rounding may differ under the interpreter (see assert_close)
        assert_close(caches[0], caches[2])
        assert_close(caches[1], caches[3])


def test_dispatcher_routes_cpu_to_reference():
    """CPU tensors take the reference (test_kernel_dispatch.py: CUDA tensors, a broken Triton)."""
    x, w = torch.randn(3, 8), torch.randn(8)
    assert torch.equal(kernels.rms_norm(x, w, 1e-6), rms_norm_ref(x, w, 1e-6))
