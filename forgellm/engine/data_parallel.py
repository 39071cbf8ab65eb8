"""DataParallelEngine: several engine replicas behind one front, as `forgellm serve --data-parallel-size N` runs.

Each replica is a whole engine (a ProcessAsyncLLM: its own process, model copy and KV cache; tensor-parallel
itself if asked). The front takes each request to the replica that served a prompt with the same beginning
(its prefix cache likely holds it; engine/prefix_router.py) unless that one is much busier, else to the
replica with the fewest live sequences, so a burst spreads over all of them; tokenizing, templates and
admission limits are the first replica's (all replicas serve the same model with the same options).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import torch

from forgellm.config import EngineConfig
from forgellm.distributed.placement import replica_configs
from forgellm.engine.async_engine import AsyncLLM
from forgellm.engine.core import EngineStats
from forgellm.engine.input_processor import ProcessedPrompt, Prompt
from forgellm.engine.prefix_router import PrefixRouter
from forgellm.engine.request_stream import RequestStream
from forgellm.sampling_params import SamplingParams


class DataParallelEngine:
    """The AsyncLLM interface the server uses, over `replicas` that each run the whole model."""

    def __init__(self, replicas: Sequence[AsyncLLM]) -> None:
        if not replicas:
            raise ValueError("a data-parallel engine needs at least one replica")
        self.replicas = list(replicas)
        self.front = self.replicas[0]
        self.routed = [0] * len(self.replicas)  # requests sent to each replica since start
        self.router = PrefixRouter(len(self.replicas))

    @classmethod
    def start(cls, replica_class: type[AsyncLLM], config: EngineConfig, **options: Any) -> DataParallelEngine:
        """`config.data_parallel_size` replicas of `replica_class`, each with data_parallel_size 1; on GPUs each
        takes a block of its own (its tensor x pipeline ranks' GPUs)."""
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        replicas = []
        try:
            for own in replica_configs(config, gpus, os.cpu_count() or 1):
                replicas.append(replica_class(config=own, **options))
        except BaseException:
            for replica in replicas:
                replica.shutdown()
            raise
        return cls(replicas)

    def __getattr__(self, name: str) -> Any:
        # Front-end attributes (tokenizer, limits, config, model_info, media_policy, process, render_chat,
        # run_in_pool, default_sampling_params, ...) are the first replica's: every replica serves the same model.
        return getattr(self.front, name)

    @property
    def is_alive(self) -> bool:
        return all(replica.is_alive for replica in self.replicas)

    def stats(self) -> EngineStats:
        """Counts summed over the replicas; usage and hit rate averaged."""
        each = [replica.stats() for replica in self.replicas]
        n = len(each)
        return dataclasses.replace(
            each[0],
            num_running=sum(s.num_running for s in each),
            num_waiting=sum(s.num_waiting for s in each),
            kv_cache_usage=sum(s.kv_cache_usage for s in each) / n,
            prefix_cache_hit_rate=sum(s.prefix_cache_hit_rate for s in each) / n,
            num_preemptions=sum(s.num_preemptions for s in each),
            num_aborted=sum(s.num_aborted for s in each),
            num_failed=sum(s.num_failed for s in each),
        )

    def num_waiting(self) -> int:
        return sum(replica.num_waiting() for replica in self.replicas)

    def _replica_for(self, prompt: Prompt | ProcessedPrompt) -> int:
        loads = [replica.num_live_requests + replica.num_waiting() for replica in self.replicas]
        return self.router.choose(prompt, loads, self.routed)

    async def add_requests(
        self, prompts: Sequence[Prompt | ProcessedPrompt], params: SamplingParams | None, request_ids: Sequence[str],
        **options: Any,
    ) -> list[RequestStream]:  # fmt: skip
        """Admit the prompts (all or none) on one replica: the first prompt's (see PrefixRouter)."""
        index = self._replica_for(prompts[0])
        streams = await self.replicas[index].add_requests(prompts, params, request_ids, **options)
        self.routed[index] += 1
        return streams

    async def add_request(self, prompt: Prompt | ProcessedPrompt, params: SamplingParams | None = None,
                          request_id: str | None = None, **options: Any) -> RequestStream:  # fmt: skip
        index = self._replica_for(prompt)
        stream = await self.replicas[index].add_request(prompt, params, request_id, **options)
        self.routed[index] += 1
        return stream

    def abort(self, request_id: str) -> None:
        for replica in self.replicas:
            replica.abort(request_id)

    def shutdown(self, timeout: float | None = 10.0) -> None:
        for replica in self.replicas:
            replica.shutdown(timeout)
