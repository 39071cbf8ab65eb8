"""LLMEngine: builds the engine from an EngineConfig and runs requests from text to RequestOutput."""

from __future__ import annotations

import itertools
import logging
import os
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from forgellm import kernels
from forgellm.config import EngineConfig
from forgellm.distributed import SINGLE_DEVICE
from forgellm.distributed.executor import TensorParallelExecutor, check_shardable
from forgellm.distributed.torchrun import torchrun_rank
from forgellm.engine.admission import RequestLimits
from forgellm.engine.core import EngineCore, EngineStats
from forgellm.engine.input_processor import InputProcessor, ProcessedPrompt, Prompt
from forgellm.engine.output_processor import OutputProcessor
from forgellm.engine.pipelined_core import PipelinedEngineCore
from forgellm.engine.request import Request, RequestStatus
from forgellm.errors import CapacityError, ConfigError, InvalidRequestError, ModelLoadError
from forgellm.hf.config import load_model_config, resolve_dtype
from forgellm.hf.config_types import ModelArchConfig
from forgellm.hf.generation_config import load_generation_defaults
from forgellm.hf.tokenizer import Tokenizer
from forgellm.kernels.attention import paged_attention_ref
from forgellm.models.registry import get_model_class
from forgellm.multimodal.chat_content import MediaPolicy
from forgellm.multimodal.inputs import vision_prompt_builder
from forgellm.outputs import RequestOutput
from forgellm.quantization.resolve import resolve_kv_cache_dtype, resolve_quantization
from forgellm.sampling_params import SamplingParams
from forgellm.scheduling.kv_cache import KVCacheManager
from forgellm.scheduling.scheduler import Scheduler
from forgellm.spec_decode.config import ProposerSetup
from forgellm.spec_decode.decoder import SpeculativeDecoder
from forgellm.spec_decode.draft_model import DraftModelProposer
from forgellm.spec_decode.eagle3 import Eagle3Proposer
from forgellm.spec_decode.proposers import check_proposer, load_proposer
from forgellm.worker.cuda_graphs import MAX_PREFILL_GRAPH_TOKENS
from forgellm.worker.kv_cache_memory import kv_block_bytes
from forgellm.worker.model_runner import ModelRunner, load_model, model_weight_bytes
from forgellm.worker.warmup import warm_up

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """What was loaded, for logs and /v1/models: the quantization scheme, weight memory, KV-cache dtype."""

    quantization: str | None  # None: not quantized
    weight_bytes: int
    kv_cache_dtype: str

    @property
    def weight_gib(self) -> float:
        return self.weight_bytes / 2**30


DEMO_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "demo"


def resolve_model_dir(model: str | None) -> Path:
    """The local checkpoint directory (the embedded demo when model is None)."""
    path = DEMO_MODEL_DIR if model is None else Path(model).expanduser()
    if not path.is_dir():
        raise ModelLoadError(
            f"model directory {str(path)!r} does not exist; forgellm loads local Hugging Face "
            "checkpoints (config.json + *.safetensors) and downloads nothing"
        )
    return path


def resolve_tokenizer_dir(config: EngineConfig, model_dir: Path) -> Path:
    """The tokenizer's directory; random-weight presets without one borrow the demo's."""
    if config.tokenizer:
        return resolve_model_dir(config.tokenizer)
    if config.load_format == "dummy" and not (model_dir / "tokenizer.json").is_file():
        return DEMO_MODEL_DIR
    return model_dir


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for but no CUDA GPU is available; use device='cpu'")
    return torch.device(name)


def resolve_max_model_len(config: EngineConfig, arch: ModelArchConfig) -> int:
    """The context length: the model's, unless a smaller one is asked for."""
    longest = arch.max_position_embeddings
    if arch.rope.type == "dynamic":  # dynamic NTK stretches the trained context by its factor
        longest = int(longest * arch.rope.factor)
    if config.max_model_len is None:
        return longest
    if config.max_model_len > longest:
        raise ConfigError(f"max_model_len {config.max_model_len} exceeds the model's context of {longest}; lower it")
    return config.max_model_len


def num_kv_blocks(config: EngineConfig, runner: ModelRunner, max_model_len: int, extra_block_bytes: int = 0) -> int:
    """Explicit num_kv_blocks, or as many blocks as the memory budget allows (no more than useful).

    On a GPU the budget is gpu_memory_utilization of its memory minus what is in use at the peak of
    a warm-up forward pass at the largest step size (weights and activations included). Each block
    also costs `extra_block_bytes` elsewhere (a draft model's cache of the same number of blocks).
    """
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    block_bytes = kv_block_bytes(runner.model, config.block_size, runner.kv_cache_dtype) + extra_block_bytes
    if runner.device.type == "cuda":
        peak = runner.profile_peak_memory(config.max_num_batched_tokens, config.max_num_seqs)
        free, total = torch.cuda.mem_get_info(runner.device)
        outside_torch = total - free - torch.cuda.memory_reserved(runner.device)  # CUDA context, other processes
        budget = config.gpu_memory_utilization * total - peak - outside_torch
    else:
        budget = config.cpu_kv_cache_gb * 2**30
    useful = config.max_num_seqs * -(-max_model_len // config.block_size)
    blocks = min(int(budget // block_bytes), useful)
    if blocks < 1:
        raise CapacityError(
            f"no memory is left for the KV cache after loading the model (budget {budget / 2**30:.2f} GiB); "
            "raise gpu_memory_utilization, lower max_num_batched_tokens, or use a smaller model"
        )
    return blocks


def max_step_tokens(config: EngineConfig) -> int:
    """The most tokens one forward pass can hold: a step's budget, or a captured graph's padded size."""
    seqs = min(config.max_num_seqs, 512)
    k = 0 if config.speculative_config is None else config.speculative_config.num_speculative_tokens
    return max(config.max_num_batched_tokens, seqs * (k + 1), MAX_PREFILL_GRAPH_TOKENS)


def use_cuda_graphs(config: EngineConfig, device: torch.device) -> bool:
    """Graphs need a GPU, graph-safe (Triton) attention, and enforce_eager off."""
    if device.type != "cuda" or config.enforce_eager:
        return False
    # The reference attention reads lengths on the host, which a graph cannot capture. CUDA tensors get
    # the reference under FORGELLM_KERNELS=reference; a broken Triton raises here, naming the problem.
    return kernels.cuda_implementation(kernels.paged_attention) is not paged_attention_ref


class LLMEngine:
    """Synchronous engine: add requests, call step() until done, get RequestOutputs."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        model_dir = resolve_model_dir(config.model)
        arch = load_model_config(model_dir)
        get_model_class(arch.architecture)  # fail on an unsupported architecture before loading anything
        self.arch = arch
        self.tokenizer = Tokenizer.from_dir(resolve_tokenizer_dir(config, model_dir))
        defaults = load_generation_defaults(model_dir)
        device, dtype = resolve_device(config.device), resolve_dtype(config.dtype, arch)
        if device.type == "cpu" and config.cpu_threads is not None:  # the engine owns its process's intra-op pool
            torch.set_num_threads(config.cpu_threads)
        if device.type == "cuda" and "OMP_NUM_THREADS" not in os.environ:
            # The host's tensor work per step is tiny; idle intra-op threads spin after each op and starve the
            # grammar pool's threads (H200 host, batch 64: 3.7 ms of bitmasks on 8 threads instead of 1.7 ms).
            torch.set_num_threads(1)
        self.max_model_len = resolve_max_model_len(config, arch)
        spec_config = config.speculative_config
        # Before loading anything: an unimplemented method, a k too long, a draft of another vocabulary fail fast.
        if spec_config is not None:
            check_proposer(spec_config, arch, self.max_model_len)
        quant_config = resolve_quantization(
            model_dir, arch.raw, config.quantization, config.quantization_group_size, config.nvfp4_mode
        )
        kv_cache_dtype = resolve_kv_cache_dtype(config.kv_cache_dtype, quant_config, dtype)
        if config.data_parallel_size > 1:
            raise ConfigError(
                "data_parallel_size > 1 runs engine replicas behind forgellm serve; an LLM is one engine (use 1)"
            )
        # Tensor / pipeline parallelism: this process is rank 0; the other ranks start now and load their shards.
        self.executor = None
        if config.node_rank != 0:
            raise ConfigError(
                f"node_rank {config.node_rank} runs only its ranks, not an engine: start it with forgellm serve "
                "--node-rank N (the engine runs on node 0)"
            )
        if config.tensor_parallel_size > 1 or config.pipeline_parallel_size > 1:
            launched = torchrun_rank()
            if launched is not None and launched.rank > 0:
                raise ConfigError(
                    f"torchrun rank {launched.rank} runs only its shard, not an engine: under torchrun start "
                    "forgellm serve (rank 0 runs the engine)"
                )
            # Before any worker starts.
            check_shardable(arch, config.tensor_parallel_size, device, config.pipeline_parallel_size, config.nnodes)
            self.executor = TensorParallelExecutor(config, device)
            weakref.finalize(self, self.executor.shutdown)
        parallel = self.executor.parallel if self.executor is not None else SINGLE_DEVICE
        model = load_model(model_dir, arch, dtype, device, config.load_format, quant_config, parallel)
        self.model_info = ModelInfo(
            quant_config.describe() if quant_config is not None else None,
            model_weight_bytes(model),
            str(kv_cache_dtype).removeprefix("torch."),
        )
        spec_decoder, draft = None, None
        if spec_config is not None:  # loaded before the memory profile, which then counts its weights
            setup = ProposerSetup(
                model, dtype, device, config.block_size, self.max_model_len, config.load_format, model_dir
            )
            proposer = load_proposer(spec_config, setup)
            spec_decoder = SpeculativeDecoder(spec_config, self.max_model_len, proposer)
            draft = proposer if isinstance(proposer, (DraftModelProposer, Eagle3Proposer)) else None
            if isinstance(proposer, Eagle3Proposer):  # the head reads these layers' inputs after every step
                model.capture_aux_hidden_states(proposer.aux_layers, max_step_tokens(config))
        runner = ModelRunner(model, config.block_size, config.seed, kv_cache_dtype)
        runner.executor = self.executor  # the other ranks, if any, profile and run every step with rank 0
        # A draft model gets as many blocks as the target: it holds K/V for the same tokens, and a few guesses.
        blocks = num_kv_blocks(config, runner, self.max_model_len, draft.block_bytes if draft else 0)
        runner.allocate_kv_cache(blocks)
        if self.executor is not None:  # every rank holds its heads' share of the same blocks
            self.executor.broadcast(blocks)
        if draft is not None:
            draft.allocate_kv_cache(blocks)
        # Pipeline parallelism keeps one batch in flight per stage (each over its own requests); speculation one.
        depth = config.pipeline_micro_batches or config.pipeline_parallel_size
        depth = 1 if self.executor is None or spec_decoder is not None else depth
        runner.prepare_host_buffers(config.max_num_batched_tokens, config.max_num_seqs, self.max_model_len, depth)
        if draft is not None:
            draft.prepare_host_buffers(
                config.max_num_batched_tokens, config.max_num_seqs, spec_config.num_speculative_tokens
            )
        if use_cuda_graphs(config, device) and self.executor is None:  # graphs with collectives: later
            # Verify steps with k drafts for every request compute k + 1 tokens each: a uniform batch.
            verify_len = 0 if spec_config is None else spec_config.num_speculative_tokens + 1
            runner.capture_cuda_graphs(
                min(config.max_num_seqs, 512), self.max_model_len, config.max_num_batched_tokens, verify_len
            )
            if draft is not None:
                draft.capture_cuda_graphs(min(config.max_num_seqs, 512), config.max_num_batched_tokens)
        kv_cache = KVCacheManager(blocks, config.block_size, config.enable_prefix_caching)
        scheduler = Scheduler(
            kv_cache,
            config.max_num_seqs,
            config.max_num_batched_tokens,
            self.max_model_len,
            config.enable_chunked_prefill,
            config.scheduling_policy,
            # An EAGLE-3 head writes its guesses' K/V into the request's blocks, past its tokens.
            spec_config.num_speculative_tokens if isinstance(draft, Eagle3Proposer) else 0,
            wait_for_sampled_tokens=depth > 1,
        )
        mode = config.async_scheduling
        # A verify step's accepted tokens must reach the host before the next step is scheduled; a pipeline
        # overlaps its own way (a batch per stage). Under tensor parallelism the other ranks take the tokens in
        # flight from rank 0's device (a broadcast).
        overlap_allowed = spec_decoder is None and config.pipeline_parallel_size == 1
        async_scheduling = overlap_allowed and (mode == "on" or (mode == "auto" and device.type == "cuda"))
        if depth > 1:
            self.core = PipelinedEngineCore(runner, scheduler, kv_cache, depth)
        else:
            self.core = EngineCore(runner, scheduler, kv_cache, async_scheduling, spec_decoder)
        tokenizer_eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        self.eos_token_ids = frozenset(defaults.eos_token_ids or arch.eos_token_ids or tokenizer_eos)
        self.limits = RequestLimits.from_config(config, self.max_model_len, arch.vocab_size, blocks)
        self.input_processor = InputProcessor(
            self.tokenizer,
            self.limits,
            defaults,
            self.eos_token_ids,
            vision_prompt_builder(model_dir, arch, config.limit_mm_per_prompt),
        )
        # Where chat messages' image URLs may point (LLM.chat and the server resolve them with it).
        self.media_policy = MediaPolicy.from_options(config.allowed_local_media_path, config.allowed_media_domains)
        self.output_processor = OutputProcessor(self.tokenizer)
        # Engine ids of samples: a counter prefix makes them unique whatever ids callers choose.
        self._sample_counter = itertools.count()
        if device.type == "cuda":
            warm_up(self)
        kv_gib = blocks * kv_block_bytes(model, config.block_size, kv_cache_dtype) / 2**30
        graphs = "on" if self.core.runner.graph_runner is not None else "off"
        summary = (
            f"loaded {model_dir} ({arch.architecture}, {str(dtype).removeprefix('torch.')}, "
            f"{self.model_info.quantization or 'not quantized'}, weights {self.model_info.weight_gib:.2f} GiB) "
            f"on {device}; "
            f"context {self.max_model_len} tokens; KV cache {blocks} blocks x {config.block_size} tokens = "
            f"{blocks * config.block_size} tokens ({kv_gib:.2f} GiB, {self.model_info.kv_cache_dtype}); "
            f"CUDA graphs {graphs}, "
            f"async scheduling {'on' if async_scheduling else 'off'}"
        )
        if depth > 1:
            summary += f", {depth} batches in flight (one per pipeline stage)"
        if self.executor is not None:
            summary += "; " + self.executor.describe(arch, device)
        if spec_config is not None:
            summary += f"; speculative decoding {spec_config.describe()} (asynchronous scheduling off)"
        logger.info("%s", summary)

    def process(self, prompt: Prompt, params: SamplingParams | None = None) -> ProcessedPrompt:
        """Validate and tokenize without queuing (raises a typed error on bad input)."""
        return self.input_processor.process(prompt, params)

    def add_request(
        self,
        request_id: str,
        prompt: Prompt | ProcessedPrompt,
        params: SamplingParams | None = None,
        *,
        priority: int = 0,
        stream: bool = False,
        delta: bool = False,
    ) -> None:
        """Queue a request (n samples become n engine sequences sharing the prompt's KV blocks).

        stream=True: an output every step, cumulative, or only what is new with delta=True. A
        request id in use raises InvalidRequestError before anything changes.
        """
        if request_id in self.output_processor.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use", "request_id")
        processed = prompt if isinstance(prompt, ProcessedPrompt) else self.process(prompt, params)
        params = processed.sampling_params
        structured = params.structured_outputs
        arrival = time.monotonic()
        # No caller can name an engine sample id: each starts with a number only this engine hands out.
        sample_ids = [f"{next(self._sample_counter)}:{request_id}#{i}" for i in range(params.n)]
        self.output_processor.add_request(
            request_id, processed.prompt, processed.prompt_token_ids, params, sample_ids, arrival, stream, delta
        )
        first: Request | None = None
        try:
            for index, sample_id in enumerate(sample_ids):
                request = Request(
                    sample_id,
                    processed.prompt_token_ids,
                    params,
                    processed.max_tokens,
                    self.eos_token_ids,
                    arrival,
                    priority,
                    sample_index=index,
                    grammar=None if structured is None else self.input_processor.grammars.new_state(structured),
                    multimodal=processed.multimodal,
                )
                # Siblings wait for the first sample's prompt, then find it in the prefix cache.
                if first is not None and self.config.enable_prefix_caching:
                    request.wait_for = first
                first = first or request
                self.core.add_request(request)
        except BaseException:
            self.abort_request(request_id)  # leave no half-added request behind
            raise

    def shutdown(self) -> None:
        """Stop the other tensor-parallel ranks, if any (also done when the engine is collected)."""
        if self.executor is not None:
            self.executor.shutdown()

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop a request at once and free its KV blocks; returns its final output (finish_reason
        "abort" on the samples still running), or None for an unknown id."""
        sample_ids, final = self.output_processor.abort_request(request_id)
        self.core.abort_requests(sample_ids)
        return final

    def has_unfinished_requests(self) -> bool:
        return self.core.has_unfinished_requests()

    def step(self) -> list[RequestOutput]:
        """Run one step; returns outputs of requests that finished (or progressed, when streaming).

        A request the engine failed to serve finishes with finish_reason "error" and its
        RequestOutput.error set; the others go on.
        """
        processed = self.output_processor.process(self.core.step())
        if processed.stopped:
            self.core.abort_requests(processed.stopped, RequestStatus.FINISHED_STOPPED)
        if processed.failed:
            self.core.abort_requests(processed.failed, RequestStatus.FINISHED_ERROR)
        return processed.outputs

    def stats(self) -> EngineStats:
        return self.core.stats()
