"""Triton paged attention against the pure-torch reference (CPU: under TRITON_INTERPRET=1, tiny shapes).

Covers decode (one split and several), prefill, extend over a cached prefix and mixed batches, every
GQA ratio, padding rows with seq_len 0, block edges, sliding windows, fp32 / bf16 / fp16.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from forgellm import kernels  # noqa: E402
from forgellm.kernels.attention import paged_attention_ref  # noqa: E402
from forgellm.kernels.triton_attention import paged_attention_triton  # noqa: E402
from forgellm.kernels.triton_decode_attention import DecodeConfig  # noqa: E402
from forgellm.kernels.triton_prefill_attention import PrefillConfig  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 5e-3}
PAD = None  # a CUDA-graph padding row: one query, seq_len 0, an all-zero block table row
GQA = [(4, 4), (4, 2), (8, 2), (16, 2), (6, 1)]  # ratios 1, 2, 4, 8 and MQA with an odd group
# Every ratio in float32; two in bf16 (the interpreter is serial: keep the folder fast).
GQA_DTYPES = [(h, kv, torch.float32) for h, kv in GQA] + [(8, 2, torch.bfloat16), (6, 1, torch.bfloat16)]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the interpreter's numpy use


def make_batch(shapes, num_heads, num_kv_heads, head_dim, block_size, dtype, seed):
    """Scattered blocks per request; shapes are (cached, new) token counts or PAD."""
    gen = torch.Generator().manual_seed(seed)
    num_blocks = 2 + sum(-(-(s[0] + s[1]) // block_size) for s in shapes if s is not PAD)
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=gen)
    v_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=gen)
    free = (torch.randperm(num_blocks - 1, generator=gen) + 1).tolist()  # block 0 is the padding target
    tables, seq_lens, starts = [], [], [0]
    for shape in shapes:
        cached, new = (0, 1) if shape is PAD else shape
        total = 0 if shape is PAD else cached + new
        tables.append([free.pop() for _ in range(-(-total // block_size))])
        seq_lens.append(total)
        starts.append(starts[-1] + new)
    width = max(max(len(t) for t in tables), 1) + 1  # a spare zero column, like real tables
    table = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
    q = torch.randn(starts[-1], num_heads, head_dim, generator=gen)
    tensors = (q, k_cache, v_cache)
    q, k_cache, v_cache = (t.to(DEVICE, dtype) for t in tensors)
    as_int = lambda v: torch.tensor(v, dtype=torch.int32, device=DEVICE)
    max_query_len = max(b - a for a, b in zip(starts, starts[1:]))
    return (q, k_cache, v_cache, table.to(DEVICE), as_int(starts), as_int(seq_lens)), max_query_len


def check(args, max_query_len, scale, window, dtype, **configs):
    """Run both versions; relative error within the dtype's tolerance, padding rows exactly zero."""
    out = paged_attention_triton(*args, scale, window, max_query_len=max_query_len, **configs)
    ref = paged_attention_ref(*args, scale, window)
    assert torch.isfinite(out).all()
    err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    assert err < TOLERANCE[dtype], err
    q_starts, seq_lens = args[4].tolist(), args[5].tolist()
    for i, seq_len in enumerate(seq_lens):
        if seq_len == 0:
            assert (out[q_starts[i] : q_starts[i + 1]] == 0).all()


DECODE_SHAPES = [(4, 1), PAD, (0, 1), (3, 1), (7, 1), (15, 1), (36, 1), PAD, (69, 1)]


@pytest.mark.parametrize("num_heads, num_kv_heads, dtype", GQA_DTYPES)
@pytest.mark.parametrize("window", [None, 6])
@pytest.mark.parametrize("splits", [1, 3])
def test_decode(num_heads, num_kv_heads, dtype, window, splits):
    """Decode rows at and across block edges, padding rows, long rows spread over splits."""
    head_dim = {4: 12, 2: 16, 1: 8}[num_kv_heads]
    args, mql = make_batch(DECODE_SHAPES, num_heads, num_kv_heads, head_dim, 4, dtype, seed=num_heads + splits)
    cfg = DecodeConfig(block_n=16, min_chunk=16, max_splits=splits, waves=10**6, num_warps=1, num_stages=1)
    check(args, mql, 0.3, window, dtype, decode_config=cfg)


PREFILL_SHAPES = [(0, 7), (9, 5), (8, 1), PAD, (12, 1), (2, 3), (0, 21), (16, 16)]


@pytest.mark.parametrize("num_heads, num_kv_heads, dtype", GQA_DTYPES)
@pytest.mark.parametrize("window", [None, 5])
def test_prefill_extend_mixed(num_heads, num_kv_heads, dtype, window):
    """Fresh prefills, extends over cached prefixes and decodes in one batch."""
    head_dim = {4: 12, 2: 32, 1: 16}[num_kv_heads]
    args, mql = make_batch(PREFILL_SHAPES, num_heads, num_kv_heads, head_dim, 4, dtype, seed=7 * num_heads)
    check(args, mql, head_dim**-0.5, window, dtype)


@pytest.mark.parametrize("block_m, block_n", [(16, 32), (32, 16)])
def test_prefill_tiles_and_block_size_16(block_m, block_n):
    """Other tile shapes, 16-token pages, head_dim 64, fp16."""
    shapes = [(0, 33), (17, 16), (31, 2), (40, 1)]
    args, mql = make_batch(shapes, 8, 2, 64, 16, torch.float16, seed=block_m + block_n)
    cfg = PrefillConfig(block_m=block_m, block_n=block_n, num_warps=1, num_stages=1)
    check(args, mql, 0.125, None, torch.float16, prefill_config=cfg)


def test_decode_without_block_id_prefetch():
    """The plain loop (block ids read in the same iteration) gives the same result."""
    args, mql = make_batch(DECODE_SHAPES, 8, 2, 16, 4, torch.float32, seed=11)
    cfg = DecodeConfig(
        block_n=16, min_chunk=16, max_splits=2, waves=10**6, num_warps=1, num_stages=1, prefetch_ids=False
    )
    check(args, mql, 0.3, None, torch.float32, decode_config=cfg)


def test_decode_default_config_block_16():
    """The default (interpreter) decode configuration, 16-token pages, head_dim 64."""
    args, mql = make_batch([(40, 1), PAD, (15, 1), (16, 1)], 8, 8, 64, 16, torch.float32, seed=3)
    check(args, mql, 0.125, None, torch.float32)


def test_max_query_len_is_optional():
    """Without the host int the kernel reads it back (allowed outside CUDA graphs)."""
    args, _ = make_batch([(3, 4), (0, 1)], 4, 2, 16, 4, torch.float32, seed=5)
    out = paged_attention_triton(*args, 0.5)
    torch.testing.assert_close(out, paged_attention_ref(*args, 0.5), rtol=1e-4, atol=1e-5)


def test_dispatcher_sends_cpu_tensors_to_the_reference():
    """The public op on CPU tensors is the reference, extra host ints included."""
    args, mql = make_batch([(3, 4), (0, 1)], 4, 2, 16, 4, torch.float32, seed=6)
    cpu_args = tuple(t.cpu() for t in args)
    out = kernels.paged_attention(*cpu_args, 0.5, None, max_query_len=mql, max_seq_len=7)
    assert torch.equal(out, paged_attention_ref(*cpu_args, 0.5))
