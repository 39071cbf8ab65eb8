"""Tensor parallelism on the CPU with gloo: each of 2 ranks (spawned processes) builds its shard of every tiny
fixture model (q/k/v and gate/up split by parts, KV heads split or, with fewer KV heads than ranks,
replicated, vocab-parallel embedding and LM head, an all-reduce after attention and after the MLP),
loads the full checkpoint into it, and prefills a batch of prompts of different lengths through the paged
KV cache: float32 logits equal the single-device model's within 1e-5 on every rank; quantized checkpoints of
every format and scheme shard their canonical parts and agree within 1e-4."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from forgellm.distributed import ParallelContext
from forgellm.distributed.pipeline import PendingLogits
from forgellm.hf.config import load_model_config
from forgellm.quantization.resolve import resolve_quantization
from forgellm.worker.forward import forward_logits
from forgellm.worker.forward_batch import SequenceChunk, build_forward_batch
from forgellm.worker.kv_cache_memory import allocate_kv_cache
from forgellm.worker.model_runner import load_model
from tests.fixtures.make_tiny_models import VARIANTS

BLOCK = 4
PROMPT_LENGTHS = [3, 11, 26]


def prefill_logits(path: str, parallel: ParallelContext) -> torch.Tensor | None:
    """Logits at every prompt position of a batch of 3 prompts, for this rank's shard of the model (under
    pipeline parallelism only global rank 0 gets them, the other ranks None)."""
    config = load_model_config(path)
    # nvfp4 as stored (weight_only): converting it to fp8 picks a scale from each rank's own slice.
    quant_config = resolve_quantization(Path(path), config.raw, None, None, "weight_only")
    model = load_model(Path(path), config, torch.float32, torch.device("cpu"), "auto", quant_config, parallel)
    allocate_kv_cache(model, 32, BLOCK, torch.float32)
    generator = torch.Generator().manual_seed(0)
    chunks, next_block = [], 0
    for length in PROMPT_LENGTHS:
        prompt = torch.randint(1, min(4000, config.vocab_size), (length,), generator=generator).tolist()
        blocks = list(range(next_block, next_block + -(-length // BLOCK)))
        next_block += len(blocks)
        chunks.append(SequenceChunk(prompt, 0, blocks, list(range(length))))
    batch = build_forward_batch(chunks, BLOCK, torch.device("cpu"))
    batch = dataclasses.replace(batch, logits_indices=torch.arange(batch.input_ids.shape[0]))
    with torch.inference_mode():
        logits = forward_logits(model, None, batch, torch.device("cpu"))
    return logits.wait() if isinstance(logits, PendingLogits) else logits  # rank 0 of a pipeline


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


QUANT_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "quant"
# Quantized checkpoints made by llmcompressor / AutoGPTQ / AutoAWQ / ModelOpt: the sharding cases of a part (fp8 per
# tensor and per channel; int4/int8 groups, asymmetric; GPTQ in plain order and act-order, whose row-parallel shards
# pad their ragged groups; AWQ; nvfp4). Block fp8 is left out: its 128-row blocks need 128 output rows per rank,
# which the tiny fixtures' projections lack.
QUANTIZED = ["ct-fp8", "mo-fp8", "ct-w4a16", "ct-w4a16-asym-g64", "ct-w8a16", "gptq-8bit", "gptq-v2", "awq-gemm",
             "mo-w4a16-awq", "ct-nvfp4a16", "gptq-v1-desc-act", "ct-w4a16-actorder"]  # fmt: skip


@pytest.fixture(scope="module")
def sharded_logits(tiny_model_dir):  # noqa: ANN001, ANN201
    """{rank: {model path: logits}} of every fixture under tensor_parallel_size 2 (one spawn for all)."""
    paths = [str(tiny_model_dir(name)) for name in VARIANTS] + [str(QUANT_DIR / name) for name in QUANTIZED]
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


@pytest.mark.parametrize("name", QUANTIZED)
def test_tp2_quantized_logits_equal_one_device(name, sharded_logits) -> None:
    path = str(QUANT_DIR / name)
    expected = prefill_logits(path, ParallelContext())
    for rank in (0, 1):
        torch.testing.assert_close(sharded_logits[rank][path], expected, atol=1e-4, rtol=0)
