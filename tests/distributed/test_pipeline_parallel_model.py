"""Pipeline parallelism on the CPU with gloo: the decoder layers split over 2 stages (spawned processes; each
builds only its layers, the first the embedding, the last the norm and LM head, a tied head the embedding
again), the residual stream passed stage to stage and the logits sent back to rank 0: float32 logits of a
batch prefilled through the paged KV cache equal the single-device model's within 1e-5 for every tiny
fixture model (GQA, MQA, tied embeddings, Qwen2/3, Mistral), and for a quantized checkpoint. With 4 ranks,
tensor parallelism 2 inside each of 2 stages gives the same logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from forgellm.distributed import ParallelContext
from forgellm.distributed.parallel_state import join_groups
from forgellm.hf.config import load_model_config
from forgellm.worker.model_runner import load_model
from tests.distributed.test_tensor_parallel_model import QUANT_DIR, free_port, prefill_logits
from tests.fixtures.make_tiny_models import VARIANTS


def _rank(rank: int, world: int, tp_size: int, port: int, paths: list[str], results: dict) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        parallel = join_groups(rank, tp_size, world // tp_size)
        logits = {path: prefill_logits(path, parallel) for path in paths}
        if rank == 0:
            results.update(logits)
        else:
            assert all(value is None for value in logits.values())  # only the engine's rank reads logits
    finally:
        torch.distributed.destroy_process_group()


def run_ranks(world: int, tp_size: int, paths: list[str]) -> dict:
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank, args=(world, tp_size, free_port(), paths, results), nprocs=world, join=True)
        return dict(results)


QUANTIZED = ["ct-w4a16", "ct-fp8"]


@pytest.fixture(scope="module")
def pp2_logits(tiny_model_dir):  # noqa: ANN001, ANN201
    """{model path: rank 0's logits} of every fixture over 2 pipeline stages (one spawn for all)."""
    paths = [str(tiny_model_dir(name)) for name in VARIANTS] + [str(QUANT_DIR / name) for name in QUANTIZED]
    return run_ranks(2, 1, paths)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pp2_logits_equal_one_device(variant, tiny_model_dir, pp2_logits) -> None:
    path = str(tiny_model_dir(variant))
    torch.testing.assert_close(pp2_logits[path], prefill_logits(path, ParallelContext()), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", QUANTIZED)
def test_pp2_quantized_logits_equal_one_device(name, pp2_logits) -> None:
    path = str(QUANT_DIR / name)
    torch.testing.assert_close(pp2_logits[path], prefill_logits(path, ParallelContext()), atol=1e-4, rtol=0)


def test_tp2_times_pp2_on_four_ranks_equals_one_device(tiny_model_dir) -> None:
    paths = [str(tiny_model_dir(name)) for name in ("llama-gqa4-llama3", "qwen3")]
    logits = run_ranks(4, 2, paths)
    for path in paths:
        torch.testing.assert_close(logits[path], prefill_logits(path, ParallelContext()), atol=1e-5, rtol=0)


def test_stages_hold_only_their_share_of_the_model(tiny_model_dir) -> None:
    from torch import nn

    config = load_model_config(tiny_model_dir("llama"))
    first, last = (
        load_model(Path(tiny_model_dir("llama")), config, torch.float32, torch.device("cpu"), "auto", None,
                   ParallelContext(pp_rank=stage, pp_size=2))
        for stage in (0, 1)
    )  # fmt: skip
    assert isinstance(first.layers[1], nn.Identity) and not isinstance(first.layers[0], nn.Identity)
    assert isinstance(last.layers[0], nn.Identity) and not isinstance(last.layers[1], nn.Identity)
    assert first.norm is None and first.lm_head is None and last.norm is not None
    assert last.embed_tokens is None or config.tie_word_embeddings  # only a tied head needs the table there
