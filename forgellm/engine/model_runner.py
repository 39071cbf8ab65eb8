"""ModelRunner: turns a SchedulerOutput into a ForwardBatch, runs the model, samples.

It owns the model, the KV-cache tensors and per-request device state (seeded generators and how
far prompt logprobs have got, both kept across preemption so a recomputed request continues
exactly where it was).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from forgellm.engine.cuda_graphs import CudaGraphRunner
from forgellm.engine.forward_batch import SequenceChunk, build_forward_batch, build_host_batch
from forgellm.engine.pinned_staging import PinnedStaging
from forgellm.engine.request import Request
from forgellm.engine.sampler import Sampler, compute_prompt_logprobs
from forgellm.engine.sampling_metadata import SamplingMetadata
from forgellm.engine.scheduler_output import ScheduledRequest, SchedulerOutput
from forgellm.hf.checkpoint import iter_checkpoint_tensors
from forgellm.hf.config_types import ModelArchConfig
from forgellm.layers.attention import Attention
from forgellm.models.registry import get_model_class


@dataclass
class TokenLogprobs:
    """Logprobs at one position: the chosen token first, then the top-k alternatives."""

    token_ids: list[int]
    logprobs: list[float]
    rank: int | None  # rank of the chosen token in the raw distribution (1 = most likely)


@dataclass
class ModelRunnerOutput:
    """What one step produced, keyed by request id."""

    sampled_token_ids: dict[str, int] = field(default_factory=dict)
    logprobs: dict[str, TokenLogprobs] = field(default_factory=dict)
    # Prompt logprobs computed this step: (index of the first prompt token they score, entries).
    prompt_logprobs: dict[str, tuple[int, list[TokenLogprobs]]] = field(default_factory=dict)


def load_model(
    model_dir: Path, arch: ModelArchConfig, dtype: torch.dtype, device: torch.device, load_format: str = "auto"
) -> nn.Module:
    """Build the model for `arch` on `device`; load safetensors weights, or random ones for "dummy"."""
    model_class = get_model_class(arch.architecture)
    with torch.device(device):
        model = model_class(arch, dtype)
    if load_format == "dummy":
        init_random_weights(model)
    else:
        model.load_weights(iter_checkpoint_tensors(model_dir))
    return model.eval()


@torch.no_grad()
def init_random_weights(model: nn.Module, seed: int = 0) -> None:
    """Seeded N(0, 0.02) weights (norm scales stay 1): benchmarks need the shapes, not the values."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, param in model.named_parameters():
        if "norm" not in name:
            param.normal_(0.0, 0.02, generator=generator)


def kv_block_bytes(arch: ModelArchConfig, block_size: int, dtype: torch.dtype) -> int:
    """Bytes of K and V, over all layers, for one block of tokens."""
    per_token = 2 * arch.num_hidden_layers * arch.num_key_value_heads * arch.head_dim * dtype.itemsize
    return per_token * block_size


class ModelRunner:
    """Runs one step of the model over the scheduled requests and samples their next tokens.

    Start-up order: build, `profile_peak_memory` (GPU), `allocate_kv_cache`, `capture_cuda_graphs`.
    """

    def __init__(self, model: nn.Module, block_size: int, seed: int) -> None:
        self.model = model
        self.arch: ModelArchConfig = model.config
        self.block_size = block_size
        self.num_blocks = 0
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.sampler = Sampler()
        self.default_generator = torch.Generator(device=self.device).manual_seed(seed)
        self.generators: dict[str, torch.Generator] = {}
        self.prompt_logprobs_done: dict[str, int] = {}
        self.graph_runner: CudaGraphRunner | None = None
        self.staging: PinnedStaging | None = None  # set by prepare_host_buffers on a GPU

    def allocate_kv_cache(self, num_blocks: int) -> None:
        """Give every attention layer its [num_blocks, block_size, kv_heads, head_dim] K and V caches."""
        self.num_blocks = num_blocks
        layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        shape = (num_blocks, self.block_size, self.arch.num_key_value_heads, self.arch.head_dim)
        for layer in layers:
            layer.k_cache = torch.empty(shape, dtype=self.dtype, device=self.device)
            layer.v_cache = torch.empty(shape, dtype=self.dtype, device=self.device)

    @torch.inference_mode()
    def profile_peak_memory(self, num_tokens: int, num_seqs: int) -> int:
        """Peak GPU bytes of a forward pass at the largest step (weights included), before the KV cache."""
        self.allocate_kv_cache(-(-num_tokens // self.block_size))  # a scratch cache for the warm-up
        torch.cuda.reset_peak_memory_stats(self.device)
        chunk = SequenceChunk([0] * num_tokens, 0, list(range(self.num_blocks)), [])
        batch = build_forward_batch([chunk], self.block_size, self.device)
        hidden = self.model(batch.input_ids, batch.positions, batch)
        logits = self.model.compute_logits(hidden[: min(num_seqs, num_tokens)])
        # The sampler's penalty tables are [num_seqs, vocab]; count a few such tensors.
        sampler_bytes = 3 * num_seqs * logits.shape[-1] * 4
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) + sampler_bytes
        del hidden, logits, batch
        self.allocate_kv_cache(0)  # drop the scratch cache before sizing the real one
        torch.cuda.empty_cache()
        return peak

    def prepare_host_buffers(self, max_num_batched_tokens: int, max_num_seqs: int, max_model_len: int) -> None:
        """Pin the step-input buffers once (GPU only: on a CPU there is no copy to overlap)."""
        if self.device.type == "cuda":
            max_blocks = -(-max_model_len // self.block_size)
            self.staging = PinnedStaging(max_num_batched_tokens, max_num_seqs, max_blocks)

    def capture_cuda_graphs(self, max_num_seqs: int, max_model_len: int) -> None:
        """Capture decode graphs for batch sizes up to max_num_seqs (needs graph-safe GPU kernels)."""
        max_blocks = -(-max_model_len // self.block_size)
        self.graph_runner = CudaGraphRunner(self.model, max_num_seqs, max_blocks, max_model_len, self.device)
        self.graph_runner.capture()

    def _generator(self, request: Request) -> torch.Generator | None:
        seed = request.sampling_params.seed
        if seed is None:
            return None
        if request.request_id not in self.generators:
            g = torch.Generator(device=self.device).manual_seed(seed + request.sample_index)
            self.generators[request.request_id] = g
        return self.generators[request.request_id]

    def _prompt_logprob_positions(self, s: ScheduledRequest) -> range:
        """Positions in this chunk whose logits score the next prompt token (not yet reported)."""
        request = s.request
        if request.sampling_params.prompt_logprobs is None:
            return range(0)
        done = self.prompt_logprobs_done.get(request.request_id, 0)
        return range(max(s.start, done), min(s.start + s.num_new_tokens, request.num_prompt_tokens - 1))

    def _to_device(self, values: list[int]) -> torch.Tensor:
        """An int64 tensor on the device, copied from pinned memory so the host does not wait."""
        host = torch.tensor(values, dtype=torch.int64)
        return host.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else host

    def release(self, request_ids: set[str]) -> None:
        """Forget the per-request state of requests that ended."""
        for request_id in request_ids:
            self.generators.pop(request_id, None)
            self.prompt_logprobs_done.pop(request_id, None)

    @torch.inference_mode()
    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        """Run the forward pass for the scheduled chunks and sample where a request needs a token."""
        self.release(scheduler_output.finished_request_ids)
        chunks, samplers, prompt_rows = [], [], []
        row = 0
        for s in scheduler_output.scheduled:
            request = s.request
            prompt_positions = self._prompt_logprob_positions(s)
            logits_positions = [p - s.start for p in prompt_positions]
            if prompt_positions:
                prompt_rows.append((s, prompt_positions, row))
                row += len(prompt_positions)
            if s.samples:
                logits_positions.append(s.num_new_tokens - 1)
                samplers.append((request, row))
                row += 1
            tokens = request.all_token_ids[s.start : s.start + s.num_new_tokens]
            chunks.append(SequenceChunk(tokens, s.start, s.block_ids, logits_positions))
        host = build_host_batch(chunks, self.block_size, staging=self.staging)
        if self.graph_runner is not None and self.graph_runner.can_run(host):
            logits = self.model.compute_logits(self.graph_runner.run(host))
        else:
            batch = host.to(self.device)
            hidden = self.model(batch.input_ids, batch.positions, batch)
            logits = self.model.compute_logits(hidden[batch.logits_indices])
        output = ModelRunnerOutput()
        if samplers:
            self._sample(logits, samplers, output)
        for s, positions, first_row in prompt_rows:
            self._score_prompt(logits[first_row : first_row + len(positions)], s, positions, output)
        return output

    def _sample(self, logits: torch.Tensor, samplers: list[tuple[Request, int]], output: ModelRunnerOutput) -> None:
        requests = [request for request, _ in samplers]
        rows = [r for _, r in samplers]
        if rows != list(range(logits.shape[0])):  # some rows only score the prompt
            logits = logits[self._to_device(rows)]
        generators = [self._generator(request) for request in requests]
        metadata = SamplingMetadata.from_requests(requests, generators, logits.shape[-1], logits.device)
        result = self.sampler(logits, metadata, self.default_generator)
        sampled = result.sampled_token_ids.tolist()  # the one device-to-host copy of the step
        for request, token in zip(requests, sampled):
            output.sampled_token_ids[request.request_id] = token
        if result.logprobs is not None:
            entries = _to_token_logprobs(result.logprobs)
            for request, entry in zip(requests, entries):
                k = request.sampling_params.logprobs
                if k is not None:
                    output.logprobs[request.request_id] = _first(entry, k)

    def _score_prompt(
        self, logits: torch.Tensor, s: ScheduledRequest, positions: range, output: ModelRunnerOutput
    ) -> None:
        request = s.request
        k = request.sampling_params.prompt_logprobs
        targets = self._to_device(request.prompt_token_ids[positions.start + 1 : positions.stop + 1])
        entries = _to_token_logprobs(compute_prompt_logprobs(logits, targets, k))
        output.prompt_logprobs[request.request_id] = (positions.start + 1, [_first(e, k) for e in entries])
        self.prompt_logprobs_done[request.request_id] = positions.stop


def _first(entry: TokenLogprobs, k: int) -> TokenLogprobs:
    """Keep the chosen token and its top-k alternatives."""
    return TokenLogprobs(entry.token_ids[: 1 + k], entry.logprobs[: 1 + k], entry.rank)


def _to_token_logprobs(tensors) -> list[TokenLogprobs]:  # noqa: ANN001 - LogprobsTensors
    ids, lps, ranks = tensors.token_ids.tolist(), tensors.logprobs.tolist(), tensors.ranks.tolist()
    return [TokenLogprobs(i, lp, r) for i, lp, r in zip(ids, lps, ranks)]
