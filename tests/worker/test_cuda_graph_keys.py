"""Which CUDA graph serves a step: decode batches padded up the ladder, short single-request prefills."""

from __future__ import annotations

import torch

from forgellm.worker.cuda_graphs import CudaGraphRunner, capture_sizes, prefill_capture_sizes
from forgellm.worker.forward_batch import SequenceChunk, build_host_batch


def runner() -> CudaGraphRunner:
    # Buffers only: key_for never touches the model, so a CPU runner is enough to test the choice.
    return CudaGraphRunner(None, 32, 8, 128, torch.device("cpu"), max_prefill_tokens=100)


def host(chunks: list[SequenceChunk]):  # noqa: ANN201 - a host ForwardBatch
    return build_host_batch(chunks, block_size=16)


def test_ladders():
    assert capture_sizes(32) == [1, 2, 4, 8, 16, 24, 32]
    assert prefill_capture_sizes(100) == [16, 32, 64] and prefill_capture_sizes(8) == []
    assert prefill_capture_sizes(8192)[-1] == 512


def test_decode_steps_pad_to_the_next_size():
    graphs = runner()
    decodes = [SequenceChunk([5], 10 + i, [i], [0]) for i in range(3)]
    assert graphs.key_for(host(decodes)) == ("decode", 4)
    assert graphs.key_for(host(decodes * 11)) is None  # 33 requests: more than the largest graph


def test_single_request_prefills_with_logits_use_prefill_graphs():
    graphs = runner()
    assert graphs.key_for(host([SequenceChunk(list(range(20)), 0, [0, 1], [19])])) == ("prefill", 32)
    assert graphs.key_for(host([SequenceChunk(list(range(64)), 16, [0, 1, 2, 3, 4], [63])])) == ("prefill", 64)
    # A verify step (the last token and 4 drafts, logits at each) or prompt logprobs: several logits rows.
    assert graphs.key_for(host([SequenceChunk(list(range(5)), 40, [0, 1, 2], [0, 1, 2, 3, 4])])) == ("prefill", 16)
    assert graphs.key_for(host([SequenceChunk(list(range(20)), 0, [0, 1], [18, 19])])) == ("prefill", 32)
    # Too long, a chunk that does not sample, two requests:
    assert graphs.key_for(host([SequenceChunk(list(range(65)), 0, [0, 1, 2, 3, 4], [64])])) is None
    assert graphs.key_for(host([SequenceChunk(list(range(20)), 0, [0, 1], [])])) is None
    two = [SequenceChunk(list(range(20)), 0, [0, 1], [19]), SequenceChunk([3], 7, [2], [0])]
    assert graphs.key_for(host(two)) is None
    # A block table wider than the graphs' buffers:
    assert graphs.key_for(host([SequenceChunk(list(range(20)), 0, list(range(9)), [19])])) is None


def test_uniform_verify_steps_use_verify_graphs():
    graphs = CudaGraphRunner(None, 32, 8, 128, torch.device("cpu"), verify_len=4)
    verify = [SequenceChunk([5, 6, 7, 8], 10 + i, [i], [0, 1, 2, 3]) for i in range(3)]
    assert graphs.key_for(host(verify)) == ("verify", 4)
    assert graphs.key_for(host(verify[:1])) == ("verify", 1)
    assert graphs.key_for(host(verify * 11)) is None  # 33 requests: more than the largest graph
    # One request with fewer drafts, or a plain decode in the same step: not uniform.
    assert graphs.key_for(host([*verify, SequenceChunk([5, 6], 10, [3], [0, 1])])) is None
    assert graphs.key_for(host([*verify, SequenceChunk([5], 10, [3], [0])])) is None
    # Decode steps still use decode graphs; without verify_len there are no verify graphs.
    assert graphs.key_for(host([SequenceChunk([5], 10, [3], [0])])) == ("decode", 1)
    assert runner().key_for(host(verify)) is None


def test_verify_graph_buffers_hold_the_largest_batch():
    graphs = CudaGraphRunner(None, 32, 8, 128, torch.device("cpu"), verify_len=6)
    batch = graphs._batch("verify", 32)
    assert batch.num_tokens == 192 and batch.max_query_len == 6 and batch.num_prefills == 32
    assert batch.query_start_loc.tolist() == list(range(0, 193, 6))
