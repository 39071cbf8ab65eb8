"""Tensor parallelism on the CPU with gloo: each of 2 ranks (spawned processes) builds its shard of every tiny
fixture model (q/k/v and gate/up split by parts, KV heads split or, with fewer KV heads than ranks,
replicated, vocab-parallel embedding and LM head, an all-reduce after attention and after the MLP),
loads the full checkpoint into it, and prefills a batch of prompts of different lengths through the paged
KV cache: float32 logits equal the single-device model's within 1e-5 on every rank."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from forgellm.distributed import ParallelContext
from forgellm.hf.checkpoint import iter_checkpoint_tensors
from forgellm.hf.config import load_model_config
from forgellm.models.registry import get_model_class
from forgellm.worker.forward_batch import SequenceChunk, build_forward_batch
from forgellm.worker.model_runner import allocate_kv_cache
from tests.fixtures.make_tiny_models import VARIANTS

BLOCK = 4
PROMPT_LENGTHS = [3, 11, 26]


def prefill_logits(path: str, parallel: ParallelContext) -> torch.Tensor:
    """Logits at every prompt position of a batch of 3 prompts, for this rank's shard of the model."""
    config = load_model_config(path)
    model = get_model_class(config.architecture)(config, torch.float32, parallel).eval()
    model.load_weights(iter_checkpoint_tensors(path))
    allocate_kv_cache(model, 32, BLOCK, torch.float32)
    generator = torch.Generator().manual_seed(0)
    chunks, next_block = [], 0
    for length in PROMPT_LENGTHS:
        prompt = torch.randint(1, 4000, (length,), generator=generator).tolist()
        blocks = list(range(next_block, next_block + -(-length // BLOCK)))
        next_block += len(blocks)
        chunks.append(SequenceChunk(prompt, 0, blocks, list(range(length))))
    batch = build_forward_batch(chunks, BLOCK, torch.device("cpu"))
    with torch.inference_mode():
        return model.compute_logits(model(batch.input_ids, batch.positions, batch))


def _rank(rank: int, world: int, port: int, paths: list[str], results: dict) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        parallel = ParallelContext(tp_rank=rank, tp_size=world)
        results[rank] = {path: prefill_logits(path, parallel) for path in paths}
    finally:
        torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def sharded_logits(tiny_model_dir):  # noqa: ANN001, ANN201
    """{rank: {model path: logits}} of every fixture under tensor_parallel_size 2 (one spawn for all)."""
    paths = [str(tiny_model_dir(name)) for name in VARIANTS]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank, args=(2, free_port(), paths, results), nprocs=2, join=True)
        return dict(results)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tp2_logits_equal_one_device(variant, tiny_model_dir, sharded_logits) -> None:
    path = str(tiny_model_dir(variant))
    expected = prefill_logits(path, ParallelContext())
    for rank in (0, 1):
        torch.testing.assert_close(sharded_logits[rank][path], expected, atol=1e-5, rtol=0)
