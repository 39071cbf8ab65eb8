"""FP8 (e4m3) KV cache on the GPU at Llama-3.1-8B shapes (32 query heads, 8 KV heads, head_dim 128,
16-token pages, bf16 activations): the compiled Triton kernels, whose float -> e4m3 cast is the
hardware's (the CPU tests run a software rounding under the interpreter), against the references and
the hand quantization of tests/kernels/test_fp8_kv_cache.py.

Test helpers are imported inside each test: importing a Triton kernel module at collection time would
fix its compile mode before tests/kernels/conftest.py could ask for the interpreter on a CPU.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu

BF16, FP8 = torch.bfloat16, torch.float8_e4m3fn
HEADS, KV_HEADS, HEAD_DIM, BLOCK = 32, 8, 128, 16
TOKENS = 4096


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def fp8_copy(args: tuple, k_scale: float, v_scale: float) -> tuple:
    """make_batch's (q, k_cache, v_cache, ...) with the caches stored in e4m3 at the given scales."""
    from forgellm.kernels.kv_cache import quantize_kv_ref

    q, k_cache, v_cache, *rest = args
    return (q, quantize_kv_ref(k_cache, FP8, k_scale), quantize_kv_ref(v_cache, FP8, v_scale), *rest)


def test_write_kv_cache_bytes_at_model_shapes() -> None:
    """4096 tokens into shuffled slots (every 7th padding): the reference's bytes, the hand quantization's values."""
    from forgellm import kernels
    from forgellm.kernels.kv_cache import write_kv_cache_ref
    from tests.kernels.test_fp8_kv_cache import K_SCALE, V_SCALE, assert_stored_like_hand, wide

    generator = torch.Generator().manual_seed(1)
    k, v = (wide(torch.randn(TOKENS, KV_HEADS, HEAD_DIM, generator=generator), s).to("cuda", BF16) for s in (2, 3))
    k[0, 0, :2] = torch.tensor([-0.0, 0.0])
    slots = torch.randperm(2 * TOKENS, generator=generator)[:TOKENS].cuda()
    slots[::7] = -1
    shape = (2 * TOKENS // BLOCK, BLOCK, KV_HEADS, HEAD_DIM)
    caches = [torch.full(shape, -7.0, device="cuda").to(FP8) for _ in range(4)]
    kernels.write_kv_cache(k, v, caches[0], caches[1], slots, k_scale=K_SCALE, v_scale=V_SCALE)  # dispatch: Triton
    write_kv_cache_ref(k, v, caches[2], caches[3], slots, k_scale=K_SCALE, v_scale=V_SCALE)
    for out, ref in ((caches[0], caches[2]), (caches[1], caches[3])):
        assert torch.equal(out.view(torch.uint8), ref.view(torch.uint8))
    valid = slots >= 0
    assert_stored_like_hand(caches[0].view(-1, KV_HEADS, HEAD_DIM)[slots[valid]], k[valid], K_SCALE)
    assert_stored_like_hand(caches[1].view(-1, KV_HEADS, HEAD_DIM)[slots[valid]], v[valid], V_SCALE)


def test_fused_rotary_and_fp8_kv_write() -> None:
    """q/k/v views of one fused QKV output: k's bytes are the rotated k quantized, v's the reference's."""
    from forgellm.kernels.kv_cache import write_kv_cache_ref
    from forgellm.kernels.rotary_kv import rotary_and_write_kv_ref
    from forgellm.kernels.triton_rotary import apply_rotary_triton
    from forgellm.kernels.triton_rotary_kv import rotary_and_write_kv_triton
    from tests.kernels.test_fp8_kv_cache import K_SCALE, V_SCALE
    from tests.kernels.test_triton_rotary_kv import make_inputs

    q, k, v, cos, sin, slots, num_slots = make_inputs(TOKENS, HEADS, KV_HEADS, HEAD_DIM, BF16, block_size=BLOCK)
    shape = (num_slots // BLOCK, BLOCK, KV_HEADS, HEAD_DIM)
    kc, vc, kc_ref, vc_ref, kc_want = (torch.zeros(shape, device="cuda").to(FP8) for _ in range(5))
    scales = dict(k_scale=K_SCALE, v_scale=V_SCALE)
    q_out = rotary_and_write_kv_triton(q, k, v, cos, sin, kc, vc, slots, **scales)
    rotary_and_write_kv_ref(q, k, v, cos, sin, kc_ref, vc_ref, slots, **scales)
    q_rot, k_rot = apply_rotary_triton(q, k, cos, sin)
    write_kv_cache_ref(k_rot, v, kc_want, torch.zeros_like(vc), slots, **scales)
    assert torch.equal(q_out, q_rot)
    assert torch.equal(kc.view(torch.uint8), kc_want.view(torch.uint8))
    assert torch.equal(vc.view(torch.uint8), vc_ref.view(torch.uint8))
    written = slots[slots >= 0]
    k_bytes, k_ref_bytes = (c.view(torch.uint8).view(-1, KV_HEADS, HEAD_DIM)[written] for c in (kc, kc_ref))
    assert (k_bytes == k_ref_bytes).float().mean().item() > 0.99  # torch's rotation may round a bf16 step apart


def decode_shapes(rows: int, long_rows: int) -> list:
    """`rows` decode contexts in [1, 4096] (page edges among them), `long_rows` of 16384, two padding rows."""
    from tests.gpu.test_gpu_kernels import contexts
    from tests.kernels.test_triton_attention import PAD

    lengths = (contexts(rows, 4096, seed=rows) if rows else []) + [16384] * long_rows
    return [(n - 1, 1) for n in lengths] + [PAD, PAD]


@pytest.mark.parametrize("window", [None, 1024])
@pytest.mark.parametrize("rows, long_rows", [(64, 2), (0, 2)])  # one program per head; split KV
def test_decode_attention_fp8(rows: int, long_rows: int, window: int | None) -> None:
    """Batch 64 up to 4k context plus two 16k rows, and the two 16k rows alone (split over many programs)."""
    from forgellm import kernels
    from forgellm.kernels.attention import paged_attention_ref
    from tests.kernels.test_fp8_kv_cache import K_SCALE, V_SCALE
    from tests.kernels.test_triton_attention import make_batch

    args, mql = make_batch(decode_shapes(rows, long_rows), HEADS, KV_HEADS, HEAD_DIM, BLOCK, BF16, seed=rows)
    args = fp8_copy(args, K_SCALE, V_SCALE)
    scales = dict(k_scale=K_SCALE, v_scale=V_SCALE)
    out = kernels.paged_attention(*args, HEAD_DIM**-0.5, window, max_query_len=mql, **scales)  # dispatch: Triton
    ref = paged_attention_ref(*args, HEAD_DIM**-0.5, window, **scales)
    assert torch.isfinite(out).all() and rel_err(out, ref) < 1e-2
    assert (out[-2:] == 0).all()  # the padding rows


@pytest.mark.parametrize("rows, long_rows", [(64, 2), (0, 2)])
def test_decode_attention_fp8_with_f16_dots(rows: int, long_rows: int) -> None:
    """DecodeConfig.fp8_f16_dot (dots in fp16 instead of q's bf16) at the tuned tiles: as close to the reference."""
    import dataclasses

    from forgellm.kernels.attention import paged_attention_ref
    from forgellm.kernels.triton_attention import _default_decode_config, paged_attention_triton
    from tests.kernels.test_fp8_kv_cache import K_SCALE, V_SCALE
    from tests.kernels.test_triton_attention import make_batch

    shapes = decode_shapes(rows, long_rows)
    args, mql = make_batch(shapes, HEADS, KV_HEADS, HEAD_DIM, BLOCK, BF16, seed=rows + 1)
    args = fp8_copy(args, K_SCALE, V_SCALE)
    cfg = dataclasses.replace(_default_decode_config(len(shapes), KV_HEADS), fp8_f16_dot=True)
    scales = dict(k_scale=K_SCALE, v_scale=V_SCALE)
    out = paged_attention_triton(*args, HEAD_DIM**-0.5, None, max_query_len=mql, decode_config=cfg, **scales)
    ref = paged_attention_ref(*args, HEAD_DIM**-0.5, None, **scales)
    assert torch.isfinite(out).all() and rel_err(out, ref) < 1e-2


@pytest.mark.parametrize("window", [None, 1024])
def test_prefill_over_cached_prefix_fp8(window: int | None) -> None:
    """A 2k prompt, an extend over a 1.5k cached prefix, short prefills, decodes and padding in one batch."""
    from forgellm.kernels.attention import paged_attention_ref
    from forgellm.kernels.triton_attention import paged_attention_triton
    from tests.kernels.test_fp8_kv_cache import K_SCALE, V_SCALE
    from tests.kernels.test_triton_attention import PAD, make_batch

    shapes = [(0, 2048), (1500, 512), (0, 333), (4000, 1), (17, 1), PAD, (100, 100), (0, 1)]
    args, mql = make_batch(shapes, HEADS, KV_HEADS, HEAD_DIM, BLOCK, BF16, seed=5)
    args = fp8_copy(args, K_SCALE, V_SCALE)
    scales = dict(k_scale=K_SCALE, v_scale=V_SCALE)
    out = paged_attention_triton(*args, HEAD_DIM**-0.5, window, max_query_len=mql, **scales)
    ref = paged_attention_ref(*args, HEAD_DIM**-0.5, window, **scales)
    assert torch.isfinite(out).all() and rel_err(out, ref) < 1e-2


@pytest.mark.parametrize("kind", ["decode", "prefill"])
def test_fp8_cache_close_to_bf16_cache(kind: str) -> None:
    """The same K/V in bf16 and in e4m3 scaled to its range (amax / 448): attention outputs within 6%."""
    from forgellm.kernels.triton_attention import paged_attention_triton
    from tests.kernels.test_triton_attention import make_batch

    shapes = decode_shapes(64, 2) if kind == "decode" else [(0, 2048), (1500, 512), (4000, 1), (0, 1)]
    args, mql = make_batch(shapes, HEADS, KV_HEADS, HEAD_DIM, BLOCK, BF16, seed=6)
    k_scale, v_scale = (c.float().abs().max().item() / 448 for c in args[1:3])
    out_bf16 = paged_attention_triton(*args, HEAD_DIM**-0.5, None, max_query_len=mql)
    out_fp8 = paged_attention_triton(
        *fp8_copy(args, k_scale, v_scale), HEAD_DIM**-0.5, None, max_query_len=mql, k_scale=k_scale, v_scale=v_scale
    )
    assert rel_err(out_fp8, out_bf16) < 0.06


def test_fp8_decode_in_a_cuda_graph() -> None:
    """Scales are plain floats, constants of the graph: a replay over rewritten caches matches eager."""
    from forgellm.kernels.triton_attention import paged_attention_triton
    from tests.kernels.test_fp8_kv_cache import K_SCALE, V_SCALE
    from tests.kernels.test_triton_attention import make_batch

    args, mql = make_batch(decode_shapes(64, 0), HEADS, KV_HEADS, HEAD_DIM, BLOCK, BF16, seed=7)
    args = fp8_copy(args, K_SCALE, V_SCALE)

    def run() -> torch.Tensor:
        return paged_attention_triton(*args, HEAD_DIM**-0.5, None, max_query_len=mql, k_scale=K_SCALE, v_scale=V_SCALE)

    run()  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run()
    for cache in args[1:3]:  # new contents, same tensors
        cache.copy_(torch.randn(cache.shape, device="cuda").to(FP8))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, run())
