"""A host ForwardBatch crosses to the other ranks pickled each step (TensorParallelExecutor.broadcast): the
round trip gives the same batch, and a batch built in staging buffers pickles only its own elements, not the
buffers behind its views."""

from __future__ import annotations

import pickle

import torch

from forgellm.worker.forward_batch import ForwardBatch, SequenceChunk, build_host_batch
from forgellm.worker.pinned_staging import PinnedStaging


def batch(staging: PinnedStaging | None = None) -> ForwardBatch:
    chunks = [
        SequenceChunk([5, 6, 7], 0, [3, 4], [2]),  # a prefill chunk
        SequenceChunk([9], 40, [0, 1, 2], [0]),  # a decode
    ]
    return build_host_batch(chunks, 16, staging=staging)


def assert_same(a: ForwardBatch, b: ForwardBatch) -> None:
    for name, value in vars(a).items():
        other = getattr(b, name)
        if isinstance(value, torch.Tensor):
            assert isinstance(other, torch.Tensor) and other.dtype == value.dtype, name
            assert torch.equal(value, other), name
        else:
            assert value == other, name


def test_a_pickled_host_batch_comes_back_equal_with_torch_tensors() -> None:
    sent = batch()
    sent.mm_embeds = torch.randn(2, 8, dtype=torch.bfloat16)  # no numpy dtype: stays a torch tensor
    sent.mm_token_indices = torch.tensor([0, 1])
    assert_same(pickle.loads(pickle.dumps(sent)), sent)


def test_a_batch_in_staging_buffers_pickles_its_elements_only() -> None:
    staging = PinnedStaging(max_tokens=100_000, max_seqs=1_000, max_blocks_per_seq=1_000, pin=False)
    staged = batch(staging)
    payload = pickle.dumps(staged)
    assert len(payload) < 4_000  # the buffers behind the views hold over 5 MB
    assert_same(pickle.loads(payload), batch())
