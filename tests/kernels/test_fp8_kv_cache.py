"""FP8 (e4m3) KV cache: references against a hand computation, Triton against the references.

The hand computation rounds K/V / scale to the nearest of e4m3's 253 finite values by searching them
(ties to the even code, saturating at ±448), dequantizes, and attends in float32 with SDPA; it shares
no code with forgellm. CPU: Triton runs under TRITON_INTERPRET=1 at tiny shapes (conftest.py).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from forgellm import kernels  # noqa: E402
from forgellm.kernels.attention import paged_attention_ref  # noqa: E402
from forgellm.kernels.kv_cache import quantize_kv_ref, write_kv_cache_ref  # noqa: E402
from forgellm.kernels.rotary import apply_rotary_ref  # noqa: E402
from forgellm.kernels.rotary_kv import rotary_and_write_kv_ref  # noqa: E402
from forgellm.kernels.triton_attention import paged_attention_triton  # noqa: E402
from forgellm.kernels.triton_decode_attention import DecodeConfig  # noqa: E402
from forgellm.kernels.triton_kv_cache import write_kv_cache_triton  # noqa: E402
from forgellm.kernels.triton_rotary import apply_rotary_triton  # noqa: E402
from forgellm.kernels.triton_rotary_kv import rotary_and_write_kv_triton  # noqa: E402
from forgellm.layers.attention import Attention  # noqa: E402
from forgellm.worker.forward_batch import SequenceChunk, build_forward_batch  # noqa: E402
from tests.kernels.test_reference_kernels import dense_attention  # noqa: E402
from tests.kernels.test_triton_attention import DEVICE, PAD, make_batch  # noqa: E402
from tests.kernels.test_triton_rotary_kv import SENTINEL, make_inputs  # noqa: E402

FP8 = torch.float8_e4m3fn
# Neither 1 nor powers of two; irrational-looking, so no K/V value divides to an exact e4m3 tie (a
# decimal scale like 1.7 makes ties such as 21.25 / 1.7 that a float64 quotient cannot place).
K_SCALE, V_SCALE = 0.031415926535897934, 1.618033988749895
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the interpreter's numpy use


def quantize_by_hand(x: torch.Tensor, scale: float) -> torch.Tensor:
    """The e4m3 value (float64, unscaled) nearest x / scale: ties to the even code, ±448 beyond the range."""
    codes = torch.arange(0, 127, dtype=torch.uint8)  # 0x00..0x7e: +0 up to 448 (0x7f is NaN)
    grid = codes.view(FP8).double()
    y = (x.double().cpu() / scale).clamp(-448, 448)
    hi = torch.searchsorted(grid, y.abs()).clamp(max=len(grid) - 1)
    lo = (hi - 1).clamp(min=0)
    d_lo, d_hi = y.abs() - grid[lo], grid[hi] - y.abs()
    take_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (codes[hi] % 2 == 0))
    return torch.where(take_hi, grid[hi], grid[lo]) * y.sign()


def assert_stored_like_hand(stored: torch.Tensor, x: torch.Tensor, scale: float) -> None:
    """stored (e4m3) holds x quantized by hand; the kernels' float32 x * (1 / scale) may only tip exact ties."""
    got, want = stored.double().cpu(), quantize_by_hand(x, scale)
    off = got != want
    assert off.double().mean().item() <= 1e-3
    assert bool(((got - want).abs()[off] <= want.abs()[off] / 8 + 2**-9).all())  # one e4m3 step at most


def wide(x: torch.Tensor, seed: int) -> torch.Tensor:
    """x times random powers of two, so stored values reach e4m3's subnormals and saturate past ±448."""
    gen = torch.Generator().manual_seed(seed)
    return x * torch.exp2(torch.randint(-14, 8, x.shape, generator=gen).float()).to(x.device, x.dtype)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def fp8_caches(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(torch.full(shape, SENTINEL, device=DEVICE).to(FP8) for _ in "kv")


def test_reference_writes_quantize_like_hand():
    """write_kv_cache_ref and rotary_and_write_kv_ref: scaled, rounded, saturated; padding slots untouched."""
    q, k, v, cos, sin, slots, num_slots = make_inputs(13, 4, 2, 32, torch.bfloat16, seed=1)
    k, v = wide(k, 2), wide(v, 3)
    shape = (num_slots // 4, 4, 2, 32)
    valid = slots >= 0
    for rotate in (False, True):
        kc, vc = fp8_caches(shape)
        if rotate:
            rotary_and_write_kv_ref(q, k, v, cos, sin, kc, vc, slots, k_scale=K_SCALE, v_scale=V_SCALE)
            k_stored = apply_rotary_ref(q, k, cos, sin)[1]
        else:
            write_kv_cache_ref(k, v, kc, vc, slots, k_scale=K_SCALE, v_scale=V_SCALE)
            k_stored = k
        flat_k, flat_v = kc.view(num_slots, 2, 32), vc.view(num_slots, 2, 32)
        assert_stored_like_hand(flat_k[slots[valid]], k_stored[valid], K_SCALE)
        assert_stored_like_hand(flat_v[slots[valid]], v[valid], V_SCALE)
        assert flat_k[slots[valid]].float().abs().max() == 448  # some did saturate
        untouched = torch.ones(num_slots, dtype=torch.bool, device=DEVICE)
        untouched[slots[valid]] = False
        assert bool((flat_k[untouched].float() == SENTINEL).all() and (flat_v[untouched].float() == SENTINEL).all())


@pytest.mark.parametrize("num_heads, num_kv_heads, window", [(8, 2, None), (6, 1, 5), (4, 4, None)])
def test_reference_attention_matches_float32_by_hand(num_heads, num_kv_heads, window):
    """paged_attention_ref over an fp8 cache = SDPA in float32 over the hand-dequantized K/V of each sequence."""
    shapes = [(0, 7), (9, 5), (7, 1), (8, 1), (2, 3)]
    args, _ = make_batch(shapes, num_heads, num_kv_heads, 16, 4, torch.float32, seed=num_heads)
    q, k_cache, v_cache, tables, starts, seq_lens = args
    kc8, vc8 = quantize_kv_ref(k_cache, FP8, K_SCALE), quantize_kv_ref(v_cache, FP8, V_SCALE)
    out = paged_attention_ref(q, kc8, vc8, tables, starts, seq_lens, 0.3, window, k_scale=K_SCALE, v_scale=V_SCALE)
    k_hand = (quantize_by_hand(k_cache, K_SCALE) * K_SCALE).float()
    v_hand = (quantize_by_hand(v_cache, V_SCALE) * V_SCALE).float()
    for i, seq_len in enumerate(seq_lens.tolist()):
        rows = slice(starts[i], starts[i + 1])
        blocks = tables[i, : -(-seq_len // 4)].cpu()
        k_seq, v_seq = (c[blocks].flatten(0, 1)[:seq_len] for c in (k_hand, v_hand))
        want = dense_attention(q[rows].float().cpu(), k_seq, v_seq, 0.3, window)
        torch.testing.assert_close(out[rows].cpu(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_triton_write_kv_cache_matches_reference_bytes(dtype):
    """Same e4m3 bytes as the reference (signed zeros, saturation, subnormals); padding slots and the rest untouched."""
    _, k, v, _, _, slots, num_slots = make_inputs(13, 2, 2, 64, dtype, seed=4)
    k, v = wide(k, 5), wide(v, 6)
    k[:, 0, :2] = torch.tensor([-0.0, 0.0], dtype=dtype)  # signed zeros stay signed
    caches = [fp8_caches((num_slots // 4, 4, 2, 64)) for _ in range(2)]
    write_kv_cache_triton(k, v, *caches[0], slots, k_scale=K_SCALE, v_scale=V_SCALE)
    write_kv_cache_ref(k, v, *caches[1], slots, k_scale=K_SCALE, v_scale=V_SCALE)
    for out, ref in zip(caches[0], caches[1], strict=True):
        assert torch.equal(out.view(torch.uint8), ref.view(torch.uint8))


@pytest.mark.parametrize(
    "tokens, num_heads, num_kv_heads, head_dim, dtype",
    [(13, 8, 2, 64, torch.bfloat16), (6, 6, 1, 32, torch.float32)],
)
def test_triton_rotary_and_write_kv_matches_reference(tokens, num_heads, num_kv_heads, head_dim, dtype):
    """q as apply_rotary_triton; k's bytes = the rotated k (Triton's rounding) quantized; v's = the reference's."""
    q, k, v, cos, sin, slots, num_slots = make_inputs(tokens, num_heads, num_kv_heads, head_dim, dtype, seed=tokens)
    k.mul_(wide(torch.ones_like(k), 7))  # in place: k stays a strided view of the fused QKV tensor
    v.mul_(wide(torch.ones_like(v), 8))
    shape = (num_slots // 4, 4, num_kv_heads, head_dim)
    (kc, vc), (kc_ref, vc_ref) = fp8_caches(shape), fp8_caches(shape)
    q_out = rotary_and_write_kv_triton(q, k, v, cos, sin, kc, vc, slots, k_scale=K_SCALE, v_scale=V_SCALE)
    rotary_and_write_kv_ref(q, k, v, cos, sin, kc_ref, vc_ref, slots, k_scale=K_SCALE, v_scale=V_SCALE)
    q_rot, k_rot = apply_rotary_triton(q, k, cos, sin)
    assert torch.equal(q_out, q_rot)
    assert torch.equal(vc.view(torch.uint8), vc_ref.view(torch.uint8))
    kc_want = fp8_caches(shape)[0]
    write_kv_cache_ref(k_rot, v, kc_want, vc_ref.clone(), slots, k_scale=K_SCALE)
    assert torch.equal(kc.view(torch.uint8), kc_want.view(torch.uint8))
    # The reference rotates k itself: the same bytes in float32; in bf16 the interpreter's float32 -> bf16
    # cast truncates, so its rotated k may sit a bf16 step off, which can tip an e4m3 rounding.
    assert rel_err(kc.float(), kc_ref.float()) <= (0.0 if dtype == torch.float32 else 3e-2)


def check_attention(args, mql, scale, window, tolerance, **configs):
    """Triton vs reference over fp8 caches with K_SCALE/V_SCALE; padding rows (seq_len 0) exactly zero."""
    scales = dict(k_scale=K_SCALE, v_scale=V_SCALE)
    out = paged_attention_triton(*args, scale, window, max_query_len=mql, **scales, **configs)
    ref = paged_attention_ref(*args, scale, window, **scales)
    assert torch.isfinite(out).all() and rel_err(out, ref) < tolerance
    starts = args[4].tolist()
    for i, seq_len in enumerate(args[5].tolist()):
        if seq_len == 0:
            assert (out[starts[i] : starts[i + 1]] == 0).all()


def fp8_batch(shapes, num_heads, num_kv_heads, head_dim, dtype, seed, block_size=4):
    """make_batch's batch with its caches stored in e4m3 at K_SCALE / V_SCALE."""
    (q, k_cache, v_cache, *rest), mql = make_batch(shapes, num_heads, num_kv_heads, head_dim, block_size, dtype, seed)
    return (q, quantize_kv_ref(k_cache, FP8, K_SCALE), quantize_kv_ref(v_cache, FP8, V_SCALE), *rest), mql


# Contexts ending at a block edge (4, 8, 16), one past it (5, 17), padding rows and a one-token context.
DECODE_SHAPES = [(3, 1), (4, 1), PAD, (15, 1), (16, 1), (0, 1), (7, 1), PAD]
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-2}


@pytest.mark.parametrize(
    "num_heads, num_kv_heads, dtype, window, splits",
    [(8, 2, torch.float32, None, 3), (6, 1, torch.bfloat16, 6, 1), (16, 2, torch.float32, 6, 2)],
)
def test_triton_decode_fp8(num_heads, num_kv_heads, dtype, window, splits):
    """Split-KV decode over fp8 caches: GQA 4, MQA with an odd group, GQA 8; windows; one or several splits."""
    args, mql = fp8_batch(DECODE_SHAPES, num_heads, num_kv_heads, 16, dtype, seed=num_heads)
    cfg = DecodeConfig(block_n=16, min_chunk=16, max_splits=splits, waves=10**6, num_warps=1, num_stages=1)
    check_attention(args, mql, 0.3, window, TOLERANCE[dtype], decode_config=cfg)


@pytest.mark.parametrize(
    "num_heads, num_kv_heads, dtype, window", [(8, 2, torch.float32, None), (6, 1, torch.bfloat16, 5)]
)
def test_triton_prefill_extend_mixed_fp8(num_heads, num_kv_heads, dtype, window):
    """Fresh prefills, extends over cached prefixes ending at and across block edges, decodes, padding."""
    shapes = [(0, 7), (8, 5), (9, 3), PAD, (4, 1), (0, 17)]
    args, mql = fp8_batch(shapes, num_heads, num_kv_heads, 16, dtype, seed=3 * num_heads)
    check_attention(args, mql, 16**-0.5, window, TOLERANCE[dtype])


@pytest.mark.parametrize("shapes", [DECODE_SHAPES, [(0, 9), (5, 4), (12, 1), PAD]], ids=["decode", "prefill"])
def test_fp8_cache_attention_close_to_bf16_cache(shapes):
    """The same K/V in a bf16 cache and in an e4m3 cache scaled to its range (amax / 448): outputs within 6%."""
    args, mql = make_batch(shapes, 8, 2, 32, 4, torch.bfloat16, seed=9)
    q, k_cache, v_cache, *rest = args
    k_scale, v_scale = (c.float().abs().max().item() / 448 for c in (k_cache, v_cache))
    fp8_args = (q, quantize_kv_ref(k_cache, FP8, k_scale), quantize_kv_ref(v_cache, FP8, v_scale), *rest)
    out_bf16 = paged_attention_triton(*args, 32**-0.5, None, max_query_len=mql)
    out_fp8 = paged_attention_triton(*fp8_args, 32**-0.5, None, max_query_len=mql, k_scale=k_scale, v_scale=v_scale)
    assert rel_err(out_fp8, out_bf16) < 0.06


def test_plain_caches_ignore_scales_and_mixed_caches_are_refused():
    """A bf16 cache stores and reads values as they are whatever the scales; fp8 K with bf16 V is a ValueError."""
    _, k, v, _, _, slots, num_slots = make_inputs(5, 2, 2, 16, torch.bfloat16, seed=10)
    shape = (num_slots // 4, 4, 2, 16)
    for write in (write_kv_cache_triton, write_kv_cache_ref):
        caches = [torch.zeros(shape, dtype=torch.bfloat16, device=DEVICE) for _ in range(4)]
        write(k, v, caches[0], caches[1], slots, k_scale=3.0, v_scale=0.5)
        write(k, v, caches[2], caches[3], slots)
        assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])
    args, mql = make_batch([(3, 2), (6, 1)], 4, 2, 16, 4, torch.bfloat16, seed=11)
    for attention in (paged_attention_triton, paged_attention_ref):
        plain = attention(*args, 0.3, max_query_len=mql)
        assert torch.equal(attention(*args, 0.3, max_query_len=mql, k_scale=3.0, v_scale=0.5), plain)
    with pytest.raises(ValueError, match="both be fp8"):
        write_kv_cache_triton(k, v, fp8_caches(shape)[0], torch.zeros(shape, device=DEVICE), slots)


@pytest.mark.parametrize("fused_rope", [False, True])
def test_attention_layer_passes_its_scales(fused_rope):
    """Attention.forward with fp8 caches (CPU: the reference ops) = the ops called with the layer's scales."""
    layer = Attention(4, 2, 16, 0.25)
    layer.k_scale, layer.v_scale = K_SCALE, V_SCALE
    chunks = [SequenceChunk([1] * 5, 0, [1, 2], [4]), SequenceChunk([1], 6, [3, 4], [0])]
    batch = build_forward_batch(chunks, 4, torch.device("cpu"))
    gen = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(6, h, 16, generator=gen) for h in (4, 2, 2))
    angles = torch.randn(6, 8, generator=gen)
    rope = (torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)) if fused_rope else None
    start = quantize_kv_ref(torch.randn(5, 4, 2, 16, generator=gen), FP8, K_SCALE)  # the cached prefix
    layer.k_cache, layer.v_cache = start.clone(), start.clone()
    out = layer(q, k, v, batch, rope)
    kc, vc = start.clone(), start.clone()
    scales = dict(k_scale=K_SCALE, v_scale=V_SCALE)
    if fused_rope:
        q = kernels.rotary_and_write_kv(q, k, v, *rope, kc, vc, batch.slot_mapping, **scales)
    else:
        kernels.write_kv_cache(k, v, kc, vc, batch.slot_mapping, **scales)
    assert torch.equal(layer.k_cache.view(torch.uint8), kc.view(torch.uint8))
    assert torch.equal(layer.v_cache.view(torch.uint8), vc.view(torch.uint8))
    want = paged_attention_ref(q, kc, vc, batch.block_tables, batch.query_start_loc, batch.seq_lens, 0.25, **scales)
    assert torch.equal(out, want.flatten(1))
