"""Fused rotary + KV-cache write (Triton) against its reference, apply_rotary_triton and write_kv_cache.

CPU: under TRITON_INTERPRET=1 (tests/kernels/conftest.py). q/k/v are strided views of one fused QKV
output, as the models pass them; slots run across block boundaries in shuffled order, with padding.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from forgellm import kernels  # noqa: E402
from forgellm.kernels.rotary_kv import rotary_and_write_kv_ref  # noqa: E402
from forgellm.kernels.triton_rotary import apply_rotary_triton  # noqa: E402
from forgellm.kernels.triton_rotary_kv import rotary_and_write_kv_triton  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 2e-3}
SENTINEL = -7.0  # what every cache slot holds before the write
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the interpreter's numpy use


def make_inputs(tokens, num_heads, num_kv_heads, head_dim, dtype, block_size=4, seed=0):
    """(q, k, v views of one fused QKV tensor, cos, sin, slots, num_slots); slots shuffled, -1 mid and last."""
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(tokens, (num_heads + 2 * num_kv_heads) * head_dim, generator=gen).to(DEVICE, dtype)
    q, k, v = qkv.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    q, k, v = (x.view(tokens, -1, head_dim) for x in (q, k, v))
    angles = torch.randn(tokens, head_dim // 2, generator=gen).to(DEVICE) * 3
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    # A run of slots starting two before a block edge, so consecutive tokens cross into the next block.
    slots = (block_size - 2 + torch.randperm(tokens, generator=gen)).to(DEVICE)
    if tokens > 2:
        slots[tokens // 2] = -1
        slots[-1] = -1
    if tokens > 5:
        slots[0] = 0  # the cache's very first slot
    num_slots = (block_size - 2 + tokens + block_size - 1) // block_size * block_size + block_size  # + a spare block
    return q, k, v, cos, sin, slots, num_slots


def run_both(q, k, v, cos, sin, slots, num_slots, cache_dtype, block_size=4):
    """Triton and reference outputs: (q_out, k_cache, v_cache) each, from caches full of SENTINEL."""
    shape = (num_slots // block_size, block_size, k.shape[1], k.shape[2])
    outs = []
    for fn in (rotary_and_write_kv_triton, rotary_and_write_kv_ref):
        kc, vc = (torch.full(shape, SENTINEL, dtype=cache_dtype, device=DEVICE) for _ in range(2))
        outs.append((fn(q, k, v, cos, sin, kc, vc, slots), kc, vc))
    return outs


def assert_close(out, ref, dtype):
    """Same dtype and shape, ‖out − ref‖ / ‖ref‖ within the tolerance of `dtype`."""
    assert out.dtype == ref.dtype and out.shape == ref.shape
    err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    assert err < TOLERANCE[dtype], err


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "tokens, num_heads, num_kv_heads, head_dim",
    [(1, 2, 2, 64), (5, 4, 2, 128), (13, 8, 2, 64), (5, 16, 2, 96), (13, 6, 1, 128)],  # GQA 1, 2, 4, 8; MQA
)
def test_matches_reference_and_unfused_triton(dtype, tokens, num_heads, num_kv_heads, head_dim):
    """q and the written k/v match the reference; q and k equal apply_rotary_triton's bit for bit."""
    q, k, v, cos, sin, slots, num_slots = make_inputs(tokens, num_heads, num_kv_heads, head_dim, dtype, seed=tokens)
    before = [x.clone() for x in (q, k, v)]
    (q_out, kc, vc), (q_ref, kc_ref, vc_ref) = run_both(q, k, v, cos, sin, slots, num_slots, dtype)
    assert all(torch.equal(x, y) for x, y in zip((q, k, v), before))  # inputs untouched
    assert q_out.is_contiguous()
    assert_close(q_out, q_ref, dtype)
    valid = slots >= 0
    written = slots[valid]
    flat = [c.view(num_slots, num_kv_heads, head_dim) for c in (kc, vc, kc_ref, vc_ref)]
    assert_close(flat[0][written], flat[2][written], dtype)
    assert torch.equal(flat[1][written], flat[3][written]) and torch.equal(flat[1][written], v[valid])
    q_unfused, k_unfused = apply_rotary_triton(q, k, cos, sin)
    assert torch.equal(q_out, q_unfused) and torch.equal(flat[0][written], k_unfused[valid])
    untouched = torch.ones(num_slots, dtype=torch.bool, device=DEVICE)
    untouched[written] = False
    assert bool((flat[0][untouched] == SENTINEL).all()) and bool((flat[1][untouched] == SENTINEL).all())


def test_padding_only_token_writes_nothing_but_rotates_q():
    """A padded decode row (slot -1): q is still rotated like the reference, the caches stay as they were."""
    q, k, v, cos, sin, _, num_slots = make_inputs(1, 4, 1, 64, torch.bfloat16, seed=3)
    slots = torch.tensor([-1], device=DEVICE)
    (q_out, kc, vc), (q_ref, _, _) = run_both(q, k, v, cos, sin, slots, num_slots, torch.bfloat16)
    assert torch.equal(q_out, apply_rotary_triton(q, k, cos, sin)[0])
    assert_close(q_out, q_ref, torch.bfloat16)
    assert bool((kc == SENTINEL).all()) and bool((vc == SENTINEL).all())


def test_float16_into_float32_cache_and_unit_stride_fallback():
    """fp16 inputs into an fp32 cache convert like the reference; q/v with a non-unit last stride are copied."""
    q, k, v, cos, sin, slots, num_slots = make_inputs(5, 4, 2, 64, torch.float16, seed=4)
    q = q.transpose(1, 2).contiguous().transpose(1, 2)  # same values, stride(-1) != 1
    v = v.transpose(1, 2).contiguous().transpose(1, 2)
    (q_out, kc, vc), (q_ref, kc_ref, vc_ref) = run_both(q, k, v, cos, sin, slots, num_slots, torch.float32)
    assert_close(q_out, q_ref, torch.float16)
    assert torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)


def test_empty_batch_and_bad_shapes():
    """No tokens: nothing launched. Mismatched v or slot_mapping: a ValueError naming the argument."""
    q, k, v, cos, sin, slots, num_slots = make_inputs(3, 2, 2, 8, torch.float32)
    cache = torch.zeros(num_slots // 4, 4, 2, 8, device=DEVICE)
    empty = rotary_and_write_kv_triton(q[:0], k[:0], v[:0], cos[:0], sin[:0], cache, cache.clone(), slots[:0])
    assert empty.shape == (0, 2, 8)
    with pytest.raises(ValueError, match="v must"):
        rotary_and_write_kv_triton(q, k, v[:, :1], cos, sin, cache, cache.clone(), slots)
    with pytest.raises(ValueError, match="slot_mapping"):
        rotary_and_write_kv_triton(q, k, v, cos, sin, cache, cache.clone(), slots[:2])


def test_dispatcher_routes_cpu_to_reference():
    """kernels.rotary_and_write_kv on CPU tensors is the reference, bit for bit."""
    q, k, v, cos, sin, slots, num_slots = make_inputs(5, 4, 2, 16, torch.float32, seed=5)
    q, k, v, cos, sin, slots = (x.cpu() for x in (q, k, v, cos, sin, slots))
    caches = [torch.zeros(num_slots // 4, 4, 2, 16) for _ in range(4)]
    out = kernels.rotary_and_write_kv(q, k, v, cos, sin, caches[0], caches[1], slots)
    ref = rotary_and_write_kv_ref(q, k, v, cos, sin, caches[2], caches[3], slots)
    assert torch.equal(out, ref) and torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])
