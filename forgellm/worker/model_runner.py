"""ModelRunner: turns a SchedulerOutput into a ForwardBatch, runs the model, samples.

It owns the model, the KV-cache tensors and per-request device state (seeded generators and how
far prompt logprobs have got, both kept across preemption so a recomputed request continues
exactly where it was).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from forgellm.distributed import SINGLE_DEVICE, ParallelContext
from forgellm.distributed.executor import TensorParallelExecutor
from forgellm.distributed.pipeline import PendingLogits
from forgellm.engine.request import Request
from forgellm.hf.checkpoint import iter_checkpoint_tensors
from forgellm.hf.config_types import ModelArchConfig
from forgellm.layers.linear import LinearBase
from forgellm.models.registry import get_model_class
from forgellm.multimodal.encoder_cache import EncoderCache
from forgellm.multimodal.step_inputs import set_rope_positions, with_media_embeddings
from forgellm.quantization.config import QuantizationConfig
from forgellm.sampling.sampler import Sampler, compute_prompt_logprobs
from forgellm.sampling.sampling_metadata import SamplingMetadata, new_grammar_bitmask
from forgellm.scheduling.scheduler_output import ScheduledRequest, SchedulerOutput
from forgellm.spec_decode.verify import verify_drafts
from forgellm.structured.state import GrammarState, accept_then_fill_async
from forgellm.worker.cuda_graphs import CudaGraphRunner
from forgellm.worker.encoder_graphs import EncoderGraphRunner
from forgellm.worker.forward import forward_logits, send_step
from forgellm.worker.forward_batch import SequenceChunk, build_host_batch
from forgellm.worker.in_flight import InFlightStep, StepHiddenStates
from forgellm.worker.kv_cache_memory import ProfileForward, allocate_kv_cache, profile_forward
from forgellm.worker.pinned_staging import PinnedStaging


@dataclass
class TokenLogprobs:
    """Logprobs at one position: the chosen token first, then the top-k alternatives."""

    token_ids: list[int]
    logprobs: list[float]
    rank: int | None  # rank of the chosen token in the raw distribution (1 = most likely)


@dataclass
class ModelRunnerOutput:
    """What one step produced, keyed by request id."""

    # The tokens each sampling request emits this step, in order (one, or several after verification).
    sampled_token_ids: dict[str, list[int]] = field(default_factory=dict)
    logprobs: dict[str, list[TokenLogprobs]] = field(default_factory=dict)  # one entry per emitted token
    # Prompt logprobs computed this step: (index of the first prompt token they score, entries).
    prompt_logprobs: dict[str, tuple[int, list[TokenLogprobs]]] = field(default_factory=dict)
    hidden_states: StepHiddenStates | None = None  # the target's features, when an EAGLE-3 head reads them


@dataclass
class DeferredSampling:
    """What a launched step still has to queue after its forward pass: rows of `logits` to sample,
    verify and score, the staging its host copies use, and the in-flight tokens it read."""

    logits: torch.Tensor
    samplers: list[tuple[Request, int]]
    verifiers: list[tuple[Request, int, list[int]]]
    prompt_rows: list[tuple[Request, range, int]]
    staging: PinnedStaging | None
    pending: tuple[list[Request], torch.Tensor | None]
    # Each sampled request's output count before this sample (host tokens + those in flight), taken at launch:
    # scheduling the next step adds placeholders before deferred sampling runs.
    prior: list[int]
    masks: tuple[torch.Tensor, Callable[[], None]] | None = None  # grammar bitmask being filled, and its wait


def load_model(
    model_dir: Path,
    arch: ModelArchConfig,
    dtype: torch.dtype,
    device: torch.device,
    load_format: str = "auto",
    quant_config: QuantizationConfig | None = None,
    parallel: ParallelContext = SINGLE_DEVICE,
) -> nn.Module:
    """Build the model for `arch` on `device` (this rank's shard under tensor parallelism); load safetensors
    weights, or random ones for "dummy"."""
    model_class = get_model_class(arch.architecture)
    with torch.device(device):
        model = model_class(arch, dtype, parallel, quant_config=quant_config)
    if load_format == "dummy":
        init_random_weights(model, device)
    else:
        model.load_weights(iter_checkpoint_tensors(model_dir))
    return model.eval()


@torch.no_grad()
def init_random_weights(model: nn.Module, device: torch.device, seed: int = 0) -> None:
    """Seeded N(0, 0.02) weights (norm scales stay 1): benchmarks need the shapes, not the values.

    Layer by layer, each linear repacks right after its weights are drawn (quantization at load keeps
    its dense weights off the GPU until then), so peak memory is the quantized model plus one layer.
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if "norm" in f"{module_name}.{name}" or not param.is_floating_point():
                continue
            if param.device == device:
                param.normal_(0.0, 0.02, generator=generator)
            else:  # drawn on the compute device: the CPU would take minutes for an 8B model
                param.copy_(
                    torch.empty(param.shape, dtype=param.dtype, device=device).normal_(0.0, 0.02, generator=generator)
                )
        if isinstance(module, LinearBase) or hasattr(module, "finish_loading"):
            module.finish_loading()  # repacking, or a layer's own invariants (e.g. zero padding)


def model_weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's weights as loaded: parameters and the quantized layers' packed buffers."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


class ModelRunner:
    """Runs one step of the model over the scheduled requests and samples their next tokens.

    Start-up order: build, `profile_peak_memory` (GPU), `allocate_kv_cache`, `capture_cuda_graphs`.
    """

    def __init__(self, model: nn.Module, block_size: int, seed: int, kv_cache_dtype: torch.dtype | None = None) -> None:
        self.model = model
        self.arch: ModelArchConfig = model.config
        self.block_size = block_size
        self.num_blocks = 0
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.kv_cache_dtype = kv_cache_dtype or self.dtype
        self.sampler = Sampler()
        self.default_generator = torch.Generator(device=self.device).manual_seed(seed)
        self.generators: dict[str, torch.Generator] = {}
        self.prompt_logprobs_done: dict[str, int] = {}
        self.encoder_cache = EncoderCache()  # a vision-language model's image embeddings
        self.executor: TensorParallelExecutor | None = None  # rank 0 of tensor parallelism: sends each batch
        self.graph_runner: CudaGraphRunner | None = None
        # Images -> LM embeddings: the model's eager tower, or its CUDA graphs once captured.
        self.encode_images = getattr(model, "encode_images", None)
        # The verify step's rule (benchmarks of random weights swap in spec_decode.forced_acceptance).
        self.verify_drafts = verify_drafts
        self.stagings: list[PinnedStaging] = []  # one per step in flight, set by prepare_host_buffers on a GPU
        self._staging_index = 0

    def allocate_kv_cache(self, num_blocks: int) -> None:
        """Give every attention layer its [num_blocks, block_size, kv_heads, head_dim] K and V caches."""
        self.num_blocks = num_blocks
        allocate_kv_cache(self.model, num_blocks, self.block_size, self.kv_cache_dtype)

    @torch.inference_mode()
    def profile_peak_memory(self, num_tokens: int, num_seqs: int) -> int:
        """Peak GPU bytes of a forward pass at the largest step (weights included), before the KV cache; with
        several ranks every rank runs it (their collectives pair up) and the largest rank's peak counts."""
        request = ProfileForward(num_tokens, num_seqs)
        if self.executor is not None:
            self.executor.broadcast(request)
        peak = profile_forward(self.model, request, self.block_size, self.kv_cache_dtype, self.device)
        self.num_blocks = 0  # the scratch cache is gone on every rank
        # The sampler's penalty tables are [num_seqs, vocab]; count a few such tensors.
        return peak + 3 * num_seqs * self.arch.vocab_size * 4

    def prepare_host_buffers(
        self, max_num_batched_tokens: int, max_num_seqs: int, max_model_len: int, max_steps_in_flight: int = 2
    ) -> None:
        """Pin the step-input buffers once, one set per step that may be in flight (GPU only: on a CPU there is no
        copy to overlap)."""
        if self.device.type == "cuda":
            max_blocks = -(-max_model_len // self.block_size)
            count = max(2, max_steps_in_flight)
            self.stagings = [PinnedStaging(max_num_batched_tokens, max_num_seqs, max_blocks) for _ in range(count)]

    def capture_cuda_graphs(
        self, max_num_seqs: int, max_model_len: int, max_prefill_tokens: int = 0, verify_len: int = 0
    ) -> None:
        """Capture decode graphs for batch sizes up to max_num_seqs, single-request prefill graphs up to
        max_prefill_tokens and, with speculation, verify graphs of verify_len tokens per request (needs
        graph-safe GPU kernels)."""
        max_blocks = -(-max_model_len // self.block_size)
        if self.arch.rope.type == "dynamic":  # its per-token lengths cannot cover padding tokens
            max_prefill_tokens = verify_len = 0
        self.graph_runner = CudaGraphRunner(
            self.model, max_num_seqs, max_blocks, max_model_len, self.device, max_prefill_tokens, verify_len
        )
        self.graph_runner.capture()
        tower = getattr(self.model, "visual", None)
        if tower is not None:  # a vision-language model: its tower replays graphs per image size too
            self.encode_images = EncoderGraphRunner(tower, pool=self.graph_runner.pool)

    def _generator(self, request: Request) -> torch.Generator | None:
        seed = request.sampling_params.sample_seed(request.sample_index)
        if seed is None:
            return None
        generator = self.generators.get(request.request_id)
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
            if not request.status.is_finished:  # aborted while its step was in flight: `release` came already
                self.generators[request.request_id] = generator
        return generator

    def _prompt_logprob_positions(self, s: ScheduledRequest) -> range:
        """Positions in this chunk whose logits score the next prompt token (not yet reported)."""
        request = s.request
        if request.sampling_params.prompt_logprobs is None:
            return range(0)
        done = self.prompt_logprobs_done.get(request.request_id, 0)
        return range(max(s.start, done), min(s.start + s.num_new_tokens, request.num_prompt_tokens - 1))

    def _to_device(self, values: list) -> torch.Tensor:
        """An int64 tensor on the device, copied from pinned memory so the host does not wait."""
        host = torch.tensor(values, dtype=torch.int64)
        return host.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else host

    def release(self, request_ids: set[str]) -> None:
        """Forget the per-request state of requests that ended."""
        for request_id in request_ids:
            self.generators.pop(request_id, None)
            self.prompt_logprobs_done.pop(request_id, None)
            self.encoder_cache.release(request_id)

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        """Run one step and wait for its results (no step may be in flight)."""
        return self.collect(self.launch(scheduler_output))

    @torch.inference_mode()
    def launch(
        self, scheduler_output: SchedulerOutput, in_flight: InFlightStep | None = None, defer_sampling: bool = False
    ) -> InFlightStep:
        """Queue the step's forward pass and sampling on the device without waiting for them.

        `in_flight` is the step launched before this one and not yet collected: tokens it sampled
        that this step computes (placeholders) are taken from its sampled ids on the device. With
        `defer_sampling` only the forward pass is queued; `sample_deferred` queues the rest once the
        host has collected `in_flight` (a grammar's mask needs the tokens it sampled).
        """
        self.release(scheduler_output.finished_request_ids)
        chunks, samplers, prompt_rows, placeholders, verifiers = self._plan(scheduler_output, in_flight)
        staging = self._next_staging()
        host = build_host_batch(chunks, self.block_size, staging=staging)
        if host.positions.dim() == 2:  # M-RoPE rows: some chunk holds prompt tokens of a request with media
            host = with_media_embeddings(host, scheduler_output, self.encoder_cache, self.encode_images, self.device)
        destinations, pending_ids = None, None
        if placeholders:
            destinations, sources = self._placeholder_indices(placeholders, staging)
            pending_ids = in_flight.sampled.index_select(0, sources)
        if self.executor is None:
            logits = forward_logits(self.model, self.graph_runner, host, self.device, destinations, pending_ids)
        else:  # the other ranks run the same forward pass; a pipeline's later stages take it once they are free
            try:  # the in-flight step's tokens and the image rows follow, from this device to theirs
                send_step(self.executor, host, [d for _, d, _ in placeholders] or None, pending_ids)
                logits = forward_logits(self.model, self.graph_runner, host, self.device, destinations, pending_ids)
            except Exception as exc:  # a collective timed out or lost a peer, or the ranks are out of step
                raise self.executor.failure(exc) from exc
            self.executor.finish_forward()
            if not isinstance(logits, PendingLogits):  # a pipeline's batch is settled when its logits come
                self.executor.wait_posted()
        step = InFlightStep(scheduler_output, [request for request, _ in samplers])
        features = getattr(self.model, "aux_hidden", None)
        if features is not None:
            step.hidden_states = _hidden_states(features, scheduler_output, chunks)
        # Tokens still in flight count for penalties and bad words; deferred, they are on the host by then.
        pending = ([], None) if defer_sampling else ([request for request, _, _ in placeholders], pending_ids)
        prior = [r.num_output_tokens + r.num_pending_tokens - 1 for r in step.sample_requests]
        step.deferred = DeferredSampling(logits, samplers, verifiers, prompt_rows, staging, pending, prior)
        if not defer_sampling:
            self.sample_deferred(step)
        return step

    @torch.inference_mode()
    def sample_deferred(self, step: InFlightStep) -> None:
        """Queue the sampling, verification, prompt scoring and host copies of a launched step.

        Called by `launch`, or by the engine after it when sampling was deferred: then only once the
        step in flight before it has been collected."""
        work, step.deferred = step.deferred, None
        logits = work.logits
        if isinstance(logits, PendingLogits):  # rank 0 of a pipeline: the last stage sends them
            logits = self._receive_logits(logits)
        pending_requests, pending_ids = work.pending
        bitmask = None
        if work.masks is not None:
            bitmask, wait = work.masks
            wait()
        if work.samplers:
            self._sample(logits, work, step, pending_requests, pending_ids, bitmask)
        if work.verifiers:
            self._verify(logits, work.verifiers, step)
        for request, positions, first_row in work.prompt_rows:
            self._score_prompt(logits[first_row : first_row + len(positions)], request, positions, step)
        step.copy_to_host(self.device, None if work.staging is None else work.staging.sampled)

    def _receive_logits(self, pending: PendingLogits) -> torch.Tensor:
        """Wait for a pipelined step's logits, and settle its batch's message (an EngineDeadError naming the rank
        when the pipeline does not deliver within the collective timeout)."""
        self.executor.wait_posted()
        try:
            return pending.wait()
        except RuntimeError as exc:
            raise self.executor.failure(exc) from exc

    def _plan(self, scheduler_output: SchedulerOutput, in_flight: InFlightStep | None) -> tuple[list, ...]:
        """Per request: its chunk, its sampling row, its prompt-logprob rows, its placeholder if any, and for
        a request verifying drafts its first row (its last token's; one more per draft)."""
        chunks, samplers, prompt_rows, placeholders, verifiers = [], [], [], [], []
        row = num_tokens = 0
        for s in scheduler_output.scheduled:
            request = s.request
            if s.spec_token_ids:  # a verify step: the last token and the drafts, with logits at every one
                tokens = [request.all_token_ids[s.start], *s.spec_token_ids]
                chunks.append(SequenceChunk(tokens, s.start, s.block_ids, list(range(len(tokens)))))
                if request.multimodal is not None:
                    set_rope_positions(chunks[-1], request.multimodal)
                verifiers.append((request, row, s.spec_token_ids))
                row += len(tokens)
                num_tokens += len(tokens)
                continue
            prompt_positions = self._prompt_logprob_positions(s)
            logits_positions = [p - s.start for p in prompt_positions]
            if prompt_positions:
                prompt_rows.append((request, prompt_positions, row))
                row += len(prompt_positions)
            if s.samples:
                logits_positions.append(s.num_new_tokens - 1)
                samplers.append((request, row))
                row += 1
            tokens = request.all_token_ids[s.start : s.start + s.num_new_tokens]
            if len(tokens) < s.num_new_tokens:  # its last token was sampled by the step in flight
                placeholders.append(self._placeholder(request, num_tokens + len(tokens), in_flight))
                tokens = [*tokens, 0]
            chunks.append(SequenceChunk(tokens, s.start, s.block_ids, logits_positions))
            if request.multimodal is not None:  # a plain text request pays one attribute test
                set_rope_positions(chunks[-1], request.multimodal)
            num_tokens += s.num_new_tokens
        return chunks, samplers, prompt_rows, placeholders, verifiers

    def prefetch_masks(
        self, step: InFlightStep, accept_first: list[tuple[GrammarState, int, int]]
    ) -> Callable[[], None]:
        """Accept the step before's tokens (`accept_first`: (grammar, output index, token)), then fill the grammar
        masks of `step`, launched with deferred sampling, on the grammars' pool, so the host's next work
        (updating the requests once the accepts are done, outputs, the next schedule) overlaps it;
        `sample_deferred` waits for the masks. Returns the wait for the accepts."""
        work = step.deferred
        if work is None or work.masks is not None or not any(r.grammar is not None for r in step.sample_requests):
            return accept_then_fill_async(accept_first, [], None)[0]
        rows = [(row, r.grammar) for row, r in enumerate(step.sample_requests) if r.grammar is not None]
        bitmask = new_grammar_bitmask(len(step.sample_requests), work.logits.shape[-1], pin=self.device.type == "cuda")
        accepted, filled = accept_then_fill_async(accept_first, rows, bitmask)
        work.masks = (bitmask, filled)
        return accepted

    def collect(self, step: InFlightStep) -> ModelRunnerOutput:
        """Wait for a launched step and turn its results into host values."""
        if step.deferred is not None:  # its sampling was never queued (e.g. the engine drains the last step)
            self.sample_deferred(step)
        step.wait()
        output = ModelRunnerOutput(hidden_states=step.hidden_states)
        sampled = step.sampled_host.tolist() if step.sampled_host is not None else []
        for request, token in zip(step.sample_requests, sampled):
            output.sampled_token_ids[request.request_id] = [token]
        if step.verified is not None:
            width = step.verified.shape[1]
            entries = None if step.verify_logprobs is None else _to_token_logprobs(step.verify_logprobs)
            for i, (request, tokens) in enumerate(zip(step.verify_requests, step.verified.tolist())):
                emitted = [t for t in tokens if t >= 0]
                output.sampled_token_ids[request.request_id] = emitted
                k = request.sampling_params.logprobs
                if k is not None and entries is not None:
                    rows = entries[i * width : i * width + len(emitted)]
                    output.logprobs[request.request_id] = [_first(entry, k) for entry in rows]
        if step.logprobs is not None:
            entries = _to_token_logprobs(step.logprobs)
            for request, entry in zip(step.sample_requests, entries):
                k = request.sampling_params.logprobs
                if k is not None:
                    output.logprobs[request.request_id] = [_first(entry, k)]
        for request, first_index, k, tensors in step.prompt_logprobs:
            entries = [_first(e, k) for e in _to_token_logprobs(tensors)]
            output.prompt_logprobs[request.request_id] = (first_index, entries)
        return output

    def _next_staging(self) -> PinnedStaging | None:
        """Take the stagings in turn: the steps in flight may still be copying from the others."""
        if not self.stagings:
            return None
        self._staging_index = (self._staging_index + 1) % len(self.stagings)
        return self.stagings[self._staging_index]

    @staticmethod
    def _placeholder(request: Request, token_index: int, in_flight: InFlightStep | None) -> tuple[Request, int, int]:
        """(request, index of the token in this step, row of the in-flight step's sampled ids holding it)."""
        source_row = None if in_flight is None else in_flight.sample_rows.get(request.request_id)
        if source_row is None or request.num_pending_tokens < 1:
            raise RuntimeError(
                f"request {request.request_id!r} needs a token that no step in flight samples "
                "(scheduler and model runner disagree)"
            )
        return request, token_index, source_row

    def _placeholder_indices(
        self, placeholders: list[tuple[Request, int, int]], staging: PinnedStaging | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The placeholders as two index tensors on the device (destinations, source rows)."""
        columns = [[dst for _, dst, _ in placeholders], [src for _, _, src in placeholders]]
        if staging is None:
            indices = self._to_device(columns)
        else:
            indices = staging.put("placeholders", columns, torch.int64).to(self.device, non_blocking=True)
        return indices[0], indices[1]

    def _sample(
        self,
        logits: torch.Tensor,
        work: DeferredSampling,
        step: InFlightStep,
        pending_requests: list[Request],
        pending_ids: torch.Tensor | None,
        bitmask: torch.Tensor | None,
    ) -> None:
        """Sample this step's tokens; `pending_ids` are the in-flight tokens of `pending_requests`; `bitmask`
        the grammar masks when they were filled ahead (`prefetch_masks`)."""
        requests = step.sample_requests
        rows = [r for _, r in work.samplers]
        if rows != list(range(logits.shape[0])):  # some rows only score the prompt
            logits = logits[self._to_device(rows)]
        generators = [self._generator(request) for request in requests]
        metadata = SamplingMetadata.from_requests(
            requests, generators, logits.shape[-1], logits.device, work.prior, grammar_bitmask=bitmask
        )
        if pending_requests and (metadata.output_token_counts is not None or metadata.bad_words_rows is not None):
            rows = self._to_device([step.sample_rows[r.request_id] for r in pending_requests])
            if metadata.output_token_counts is not None:
                # Penalties count every output token; the host's lists lack those still in flight.
                ones = torch.ones_like(pending_ids, dtype=metadata.output_token_counts.dtype)
                metadata.output_token_counts.index_put_((rows, pending_ids), ones, accumulate=True)
            if metadata.bad_words_rows is not None:
                # Bad words that end after a token still in flight ban only where that token is theirs.
                last = torch.full((logits.shape[0],), -1, dtype=torch.int64, device=logits.device)
                metadata.last_token_ids = last.index_put_((rows,), pending_ids)
        result = self.sampler(logits, metadata, self.default_generator)
        step.sampled = result.sampled_token_ids
        step.logprobs = result.logprobs

    def _verify(self, logits: torch.Tensor, verifiers: list[tuple[Request, int, list]], step: InFlightStep) -> None:
        """Check each verifying request's drafts against its logits; the emitted tokens go to `step.verified`."""
        rows = [row + i for _, row, drafts in verifiers for i in range(1 + len(drafts))]
        requests = [request for request, _, _ in verifiers]
        generators = [self._generator(request) for request in requests]
        step.verify_requests = requests
        result = self.verify_drafts(
            logits[self._to_device(rows)], requests, [d for _, _, d in verifiers], generators, self.default_generator
        )
        step.verified, step.verify_logprobs = result.token_ids, result.logprobs

    def _score_prompt(self, logits: torch.Tensor, request: Request, positions: range, step: InFlightStep) -> None:
        k = request.sampling_params.prompt_logprobs
        targets = self._to_device(request.prompt_token_ids[positions.start + 1 : positions.stop + 1])
        step.prompt_logprobs.append((request, positions.start + 1, k, compute_prompt_logprobs(logits, targets, k)))
        if not request.status.is_finished:
            self.prompt_logprobs_done[request.request_id] = positions.stop


def _hidden_states(features: torch.Tensor, output: SchedulerOutput, chunks: list[SequenceChunk]) -> StepHiddenStates:
    layout, row = [], 0
    for scheduled, chunk in zip(output.scheduled, chunks, strict=True):
        layout.append((scheduled.request, chunk.start, row, len(chunk.token_ids), scheduled.block_ids))
        row += len(chunk.token_ids)
    return StepHiddenStates(features, layout)


def _first(entry: TokenLogprobs, k: int) -> TokenLogprobs:
    """Keep the chosen token and its top-k alternatives."""
    return TokenLogprobs(entry.token_ids[: 1 + k], entry.logprobs[: 1 + k], entry.rank)


def _to_token_logprobs(tensors) -> list[TokenLogprobs]:  # noqa: ANN001 - LogprobsTensors
    ids, lps, ranks = tensors.token_ids.tolist(), tensors.logprobs.tolist(), tensors.ranks.tolist()
    return [TokenLogprobs(i, lp, r) for i, lp, r in zip(ids, lps, ranks)]
