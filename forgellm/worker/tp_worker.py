"""A tensor- or pipeline-parallel worker: rank 1 .. n-1 of the engine, in its own process
(`python -m forgellm.worker.tp_worker --rank R --world-size N --init-method tcp://... --config JSON`).

It builds its shard of the model (its stage's layers, its share of each), then does what rank 0 broadcasts
until it receives None: run the memory-profiling forward pass with it, allocate its share of every KV block
once told how many, and run its part of the forward pass of every batch (rank 0 samples: the last stage sends
it the logits).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch
import torch.distributed as dist

from forgellm.config import EngineConfig
from forgellm.distributed.heartbeat import Heartbeats
from forgellm.distributed.messages import message_group, receive_message
from forgellm.distributed.parallel_state import join_groups


def run_worker(
    config: EngineConfig,
    rank: int,
    world_size: int,
    init_method: str,
    heartbeat: str | None = None,
    local_rank: int | None = None,
) -> None:
    """Entry point of rank `rank`'s process (see TensorParallelExecutor); `heartbeat`: rank 0's Heartbeats file
    (same node), counted up as each step arrives; `local_rank`: its GPU on this node (default: from `rank`)."""
    from forgellm.distributed.executor import collective_timeout
    from forgellm.distributed.placement import rank_gpu, ranks_per_node
    from forgellm.engine.llm_engine import max_step_tokens, resolve_device, resolve_model_dir
    from forgellm.hf.config import load_model_config, resolve_dtype
    from forgellm.quantization.resolve import resolve_kv_cache_dtype, resolve_quantization
    from forgellm.spec_decode.eagle3 import eagle3_target_layers
    from forgellm.worker.forward import worker_forward
    from forgellm.worker.kv_cache_memory import ProfileForward, allocate_kv_cache, profile_forward
    from forgellm.worker.model_runner import load_model

    device = resolve_device(config.device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        local = rank % ranks_per_node(config) if local_rank is None else local_rank
        device = torch.device("cuda", rank_gpu(config, local))  # this engine's GPUs on the node, one per local rank
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend, init_method=init_method, rank=rank, world_size=world_size, timeout=collective_timeout(config)
    )
    messages = message_group()  # before join_groups, as on rank 0
    beats = None if heartbeat is None else Heartbeats(heartbeat, world_size, rank)
    try:
        model_dir = resolve_model_dir(config.model)
        arch = load_model_config(model_dir)
        dtype = resolve_dtype(config.dtype, arch)
        quant_config = resolve_quantization(
            model_dir, arch.raw, config.quantization, config.quantization_group_size, config.nvfp4_mode
        )
        parallel = join_groups(rank, config.tensor_parallel_size, config.pipeline_parallel_size, beats)
        model = load_model(model_dir, arch, dtype, device, config.load_format, quant_config, parallel)
        aux_layers = eagle3_target_layers(config.speculative_config, arch)
        if aux_layers and parallel.pp_size > 1:  # rank 0's EAGLE-3 head reads them: this stage sends its own
            model.capture_aux_hidden_states(aux_layers, max_step_tokens(config))
        kv_dtype = resolve_kv_cache_dtype(config.kv_cache_dtype, quant_config, dtype)
        with torch.inference_mode():
            while True:
                message = _receive(messages, beats)
                if message is None:  # stop
                    break
                if isinstance(message, ProfileForward):  # rank 0 sizes the KV cache: every rank profiles alike
                    profile_forward(model, message, config.block_size, kv_dtype, device)
                elif isinstance(message, int):  # the KV cache's size in blocks
                    allocate_kv_cache(model, message, config.block_size, kv_dtype)
                else:  # a step's batch
                    worker_forward(model, message, device)
                    if beats is not None:
                        beats.finish_forward()
    finally:
        if beats is not None:
            beats.close()
        dist.destroy_process_group()


def _receive(messages: Any, beats: Heartbeats | None) -> Any:
    """What rank 0 sends next (waiting as long as the engine idles); the heartbeat counts it as picked up."""
    message = receive_message(messages)
    if beats is not None:
        beats.beat()
    return message


def main() -> None:
    """Command-line entry point: the executor starts each worker with its rank and the engine options."""
    parser = argparse.ArgumentParser(description="a forgellm tensor-parallel worker (started by the engine)")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--init-method", required=True)
    parser.add_argument("--config", required=True, help="the engine's EngineConfig as JSON")
    parser.add_argument("--heartbeat", default=None, help="rank 0's heartbeat file (ranks on its node)")
    args = parser.parse_args()
    config = EngineConfig.from_dict(json.loads(args.config))
    run_worker(config, args.rank, args.world_size, args.init_method, args.heartbeat)


if __name__ == "__main__":
    main()
