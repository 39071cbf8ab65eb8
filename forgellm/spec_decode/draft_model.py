"""Draft-model proposer: a smaller model with the target's vocabulary guesses the next k tokens.

Per step, for all speculating requests at once, the draft runs k forwards: the first feeds each
request's tokens its cache lacks (at least the last one; after a verify step the accepted tokens),
the next k - 1 feed one guess each (a decode batch, a CUDA-graph replay on a GPU). Guesses are the
draft's argmax: a deterministic proposal, so verification accepts a guess x with the target's own
probability p(x) and resamples from p without x otherwise, which keeps the target's distribution
for any sampling settings (see sampling/rejection_sampler.py). The guesses stay on the device until
all k are made; one copy brings them to the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from forgellm.engine.request import Request
from forgellm.hf.config import load_model_config
from forgellm.hf.config_types import ModelArchConfig
from forgellm.quantization.resolve import resolve_quantization
from forgellm.sampling.sampling_metadata import to_device
from forgellm.spec_decode.config import ProposerSetup, SpeculativeConfig, check_draft_vocab
from forgellm.spec_decode.draft_kv_cache import DraftKVCache
from forgellm.spec_decode.guess_inputs import GuessInputs
from forgellm.worker.cuda_graphs import CudaGraphRunner
from forgellm.worker.forward import forward_logits
from forgellm.worker.forward_batch import SequenceChunk
from forgellm.worker.kv_cache_memory import allocate_kv_cache, kv_block_bytes
from forgellm.worker.model_runner import load_model

# Each step the draft first feeds a request's two last tokens: after a step that accepted all k guesses
# it lacks both (the last guess, the bonus), otherwise one, and recomputing the other (same K/V) keeps
# the batch uniform, so a CUDA graph of two tokens per request serves it.
CATCH_UP_TOKENS = 2


def load_draft_config(config: SpeculativeConfig, target_arch: ModelArchConfig) -> ModelArchConfig:
    """The draft model's config, refused (ConfigError) if its vocabulary is not the target's."""
    arch = load_model_config(Path(config.model).expanduser())
    check_draft_vocab(target_arch.vocab_size, arch.vocab_size, config.model)
    return arch


def columns_to_drafts(columns: list[torch.Tensor]) -> list[list[int]]:
    """Per job, its guesses: column j holds guess j + 1 of the first len(column j) jobs (one copy to the host)."""
    flat = torch.cat(columns).tolist()
    drafts: list[list[int]] = [[] for _ in range(columns[0].shape[0])]
    offset = 0
    for column in columns:
        for row in range(column.shape[0]):
            drafts[row].append(flat[offset + row])
        offset += column.shape[0]
    return drafts


@dataclass
class _Job:
    """One request's proposal in this step."""

    request: Request
    k: int  # guesses to make
    num_valid: int  # leading tokens whose K/V the draft cache holds
    block_ids: list[int]


class DraftModelProposer:
    """Drafts up to k tokens per request with a draft model and its own paged KV cache."""

    def __init__(self, model: nn.Module, block_size: int, max_model_len: int) -> None:
        self.model = model
        self.arch: ModelArchConfig = model.config
        self.block_size = block_size
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        # Positions the draft can embed: past its own context a request stops drafting.
        self.max_model_len = min(max_model_len, self.arch.max_position_embeddings)
        self.kv: DraftKVCache | None = None
        self.graph_runner: CudaGraphRunner | None = None
        self.inputs = GuessInputs(block_size, self.device)

    @classmethod
    def load(cls, config: SpeculativeConfig, setup: ProposerSetup) -> DraftModelProposer:
        """Load `config.model` (same vocabulary as the target) on the target's device, in its dtype."""
        arch = load_draft_config(config, setup.target.config)
        path = Path(config.model).expanduser()
        quant_config = resolve_quantization(path, arch.raw, None)
        model = load_model(path, arch, setup.dtype, setup.device, setup.load_format, quant_config)
        return cls(model, setup.block_size, setup.max_model_len)

    @property
    def block_bytes(self) -> int:
        """Bytes of the draft's K and V for one block of tokens (all its layers)."""
        return kv_block_bytes(self.model, self.block_size, self.dtype)

    def allocate_kv_cache(self, num_blocks: int) -> None:
        allocate_kv_cache(self.model, num_blocks, self.block_size, self.dtype)
        self.kv = DraftKVCache(num_blocks, self.block_size)

    def prepare_host_buffers(self, max_num_batched_tokens: int, max_num_seqs: int, k: int) -> None:
        """Pin the inputs of the k forwards of a step once (GPU only)."""
        max_blocks = -(-self.max_model_len // self.block_size)
        self.inputs.prepare(max_num_batched_tokens, max_num_seqs, max_blocks, k)

    def capture_cuda_graphs(self, max_num_seqs: int, max_prefill_tokens: int) -> None:
        """Graphs for the draft's one-guess-per-request forwards, its two-token catch-ups and one request's
        longer catch-ups (after allocate_kv_cache)."""
        max_blocks = -(-self.max_model_len // self.block_size)
        self.graph_runner = CudaGraphRunner(
            self.model, max_num_seqs, max_blocks, self.max_model_len, self.device, max_prefill_tokens, CATCH_UP_TOKENS
        )
        self.graph_runner.capture()

    @torch.inference_mode()
    def propose_for(
        self, requests: Sequence[Request], ks: Sequence[int], hidden_states: object = None
    ) -> list[list[int]]:
        """Up to ks[i] guesses for each of `requests` (the running ones; ks[i] = 0: none for it)."""
        self.kv.retain(r.request_id for r in requests)
        jobs = [job for request, k in zip(requests, ks) if k > 0 and (job := self._job(request, k)) is not None]
        drafts = {id(request): [] for request in requests}
        if not jobs:
            return list(drafts.values())
        jobs.sort(key=lambda job: -job.k)  # the requests still guessing at step j are a prefix
        for job, guesses in zip(jobs, columns_to_drafts(self._run(jobs))):
            drafts[id(job.request)] = guesses
        for job in jobs:
            guesses = drafts[id(job.request)]
            # Fed to the draft: the request's tokens, then every guess but the last.
            self.kv.record(job.request.request_id, job.request.num_tokens, guesses[:-1])
        return list(drafts.values())

    def _job(self, request: Request, k: int) -> _Job | None:
        num_tokens = request.num_tokens
        # Guess i (1-based) is made from position num_tokens - 2 + i: the last guess's input stays in context.
        k = min(k, self.max_model_len - num_tokens + 1)
        if k < 1:
            return None
        block_ids = self.kv.reserve(request.request_id, num_tokens + k - 1)
        if block_ids is None:  # the draft cache is full: this request decodes plainly this step
            return None
        # At least the last two tokens are fed: the last one's logits make the first guess.
        valid = self.kv.num_valid_tokens(request.request_id, request.all_token_ids)
        num_valid = max(0, min(valid, num_tokens - CATCH_UP_TOKENS))
        return _Job(request, k, num_valid, block_ids)

    def _run(self, jobs: list[_Job]) -> list[torch.Tensor]:
        """The k forwards; column j holds guess j + 1 of the jobs that make one (a prefix of `jobs`)."""
        chunks, last_rows = [], []
        for job in jobs:
            tokens = job.request.all_token_ids[job.num_valid :]
            # Logits at both tokens of a catch-up (the uniform graph computes them), at the last of a longer one.
            rows = list(range(len(tokens))) if len(tokens) == CATCH_UP_TOKENS else [len(tokens) - 1]
            chunks.append(SequenceChunk(tokens, job.num_valid, job.block_ids, rows))
            last_rows.append(len(rows) + (last_rows[-1] if last_rows else 0))
        host = self.inputs.batch(chunks, 0)
        guesses = forward_logits(self.model, self.graph_runner, host, self.device).argmax(dim=-1)
        if last_rows[-1] != len(jobs):  # some chunks had logits at more than their last token
            guesses = guesses[to_device(torch.tensor(last_rows), self.device) - 1]
        columns = [guesses]
        rows = torch.arange(len(jobs), device=self.device)
        for step in range(1, jobs[0].k):
            count = sum(job.k > step for job in jobs)
            chunks = [SequenceChunk([0], job.request.num_tokens - 1 + step, job.block_ids, [0]) for job in jobs[:count]]
            host = self.inputs.batch(chunks, step)
            logits = forward_logits(self.model, self.graph_runner, host, self.device, rows[:count], guesses[:count])
            guesses = logits.argmax(dim=-1)
            columns.append(guesses)
        return columns
