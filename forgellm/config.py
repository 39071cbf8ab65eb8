"""EngineConfig: the one source of truth for LLM(...) kwargs, CLI flags and YAML config files.

Each field's `help` metadata becomes the CLI flag's help text (`--max-num-seqs` for `max_num_seqs`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from forgellm.errors import ConfigError
from forgellm.spec_decode.config import SpeculativeConfig

# Sequences (n per request) that may wait for a seat in an AsyncLLM / server engine, tokenizing ones
# included; beyond it requests are refused (429 over HTTP) until the queue drains.
DEFAULT_MAX_WAITING_REQUESTS = 1024


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class EngineConfig:
    """Options of the engine. `model=None` means the embedded demo model."""

    model: str | None = _opt(None, "Hugging Face model directory (default: the embedded demo)")
    tokenizer: str | None = _opt(None, "tokenizer directory (default: the model directory)")
    load_format: str = _opt("auto", "auto (the checkpoint's safetensors) or dummy (random weights from config.json)")
    dtype: str = _opt("auto", "weights and activations: auto (the checkpoint's), float32, float16, bfloat16")
    device: str = _opt("auto", "cuda, cpu, or auto (cuda when available)")
    max_model_len: int | None = _opt(None, "longest prompt + output in tokens (default: the model's)")
    max_num_seqs: int = _opt(256, "most requests running in one step")
    max_num_batched_tokens: int = _opt(8192, "most tokens (prompt chunks + decodes) in one step")
    block_size: int = _opt(16, "tokens per KV-cache block")
    enable_prefix_caching: bool = _opt(True, "reuse the KV cache of shared prompt prefixes")
    enable_chunked_prefill: bool = _opt(True, "split long prompts across steps, mixed with decodes")
    num_kv_blocks: int | None = _opt(None, "KV-cache blocks (default: sized from memory)")
    cpu_kv_cache_gb: float = _opt(1.0, "KV-cache size on the CPU, in GiB, when num_kv_blocks is unset")
    gpu_memory_utilization: float = _opt(0.90, "fraction of GPU memory the engine may use")
    cpu_threads: int | None = _opt(
        None, "torch threads of an engine on the CPU (default: torch's; data-parallel replicas split the cores)"
    )
    scheduling_policy: str = _opt("fcfs", "fcfs (first come, first served) or priority")
    seed: int = _opt(0, "seed of the engine's random generator (requests without their own seed)")
    enforce_eager: bool = _opt(False, "disable CUDA graphs")
    async_scheduling: str = _opt(
        "auto", "prepare the next step on the host while the GPU runs the current one: auto (on with a GPU), on, off"
    )
    tensor_parallel_size: int = _opt(1, "GPUs to shard each layer over")
    pipeline_parallel_size: int = _opt(1, "pipeline stages to split the decoder layers over")
    pipeline_micro_batches: int = _opt(
        0,
        "batches in flight under pipeline parallelism, each of its own requests (0: one per stage; 1: take turns)",
    )
    data_parallel_size: int = _opt(1, "engine replicas behind one server (forgellm serve), each routed requests")
    # Several nodes (tensor x pipeline ranks split evenly): node 0 runs the engine, the others only ranks.
    nnodes: int = _opt(1, "nodes the tensor- and pipeline-parallel ranks are spread over")
    node_rank: int = _opt(0, "this node's index: 0 runs the engine (and serves), the others only their ranks")
    master_addr: str = _opt("127.0.0.1", "address of node 0, where the ranks meet (torch.distributed TCP store)")
    master_port: int = _opt(0, "port of that meeting point on node 0 (0: a free one; set it with several nodes)")
    distributed_timeout_s: float = _opt(
        120.0, "seconds a collective waits for a rank before the engine declares that rank hung and stops"
    )
    # Quantization (forgellm/quantization): a quantized checkpoint loads as saved; these quantize others.
    quantization: Literal["fp8", "int8", "int4", "nvfp4"] | None = _opt(
        None, "quantize an unquantized checkpoint at load (round to nearest): fp8, int8, int4 or nvfp4"
    )
    quantization_group_size: int | None = _opt(
        None, "inputs per scale for int4/int8 at load: 32, 64, 128, 256 or -1 per channel (default: int4 128, int8 -1)"
    )
    kv_cache_dtype: Literal["auto", "fp8"] = _opt(
        "auto", "KV cache: auto (the model dtype) or fp8 (e4m3, with the checkpoint's k/v scales where it has them)"
    )
    nvfp4_mode: Literal["weight_only", "fp8"] = _opt(
        "fp8",
        "how NVFP4 weights run on GPUs without FP4 tensor cores: fp8 (converted at load; faster on the H200 today) "
        "or weight_only (fp4 dequantized in the GEMM; 30% less weight memory)",
    )
    speculative_config: dict[str, Any] | SpeculativeConfig | None = _opt(
        None,
        'speculative decoding as a JSON object, e.g. \'{"method": "eagle3", "model": PATH, '
        '"num_speculative_tokens": 3}\' (methods ngram, draft_model, eagle3). Turns asynchronous scheduling off; '
        "requests under a grammar decode without speculation",
    )
    # Images (vision-language models, forgellm/multimodal).
    limit_mm_per_prompt: int = _opt(8, "most images in one prompt")
    allowed_local_media_path: str | None = _opt(
        None, "directory whose files image URLs (file:// or a path) may name; default: none"
    )
    allowed_media_domains: str | None = _opt(
        None, "comma-separated hosts whose http(s) image URLs may be fetched; default: none (data URLs only)"
    )
    # Admission limits: what one request may ask for (engine/admission.py checks them).
    max_n: int = _opt(128, "most samples (n) one request may ask for")
    max_logprobs: int = _opt(20, "most logprobs / prompt_logprobs alternatives per position")
    max_stop_strings: int = _opt(16, "most stop strings one request may give")
    max_stop_str_len: int = _opt(512, "longest stop string, in characters")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid option."""
        positive = (
            "max_num_seqs",
            "max_num_batched_tokens",
            "block_size",
            "tensor_parallel_size",
            "pipeline_parallel_size",
            "data_parallel_size",
            "max_n",
            "max_stop_str_len",
            "limit_mm_per_prompt",
        )
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.nnodes, int) or self.nnodes < 1:
            raise ConfigError(f"nnodes must be a positive integer, got {self.nnodes!r}")
        if not isinstance(self.node_rank, int) or not 0 <= self.node_rank < self.nnodes:
            raise ConfigError(f"node_rank must be in [0, nnodes) = [0, {self.nnodes}), got {self.node_rank!r}")
        if not self.distributed_timeout_s > 0:
            raise ConfigError(f"distributed_timeout_s must be > 0, got {self.distributed_timeout_s!r}")
        if not isinstance(self.master_port, int) or not 0 <= self.master_port < 65536:
            raise ConfigError(f"master_port must be a TCP port (0: a free one), got {self.master_port!r}")
        if self.nnodes > 1:
            world = self.tensor_parallel_size * self.pipeline_parallel_size
            if world % self.nnodes:
                raise ConfigError(
                    f"{self.nnodes} nodes cannot share tensor_parallel_size x pipeline_parallel_size = {world} ranks "
                    "evenly"
                )
            if self.master_port == 0:
                raise ConfigError("with nnodes > 1 give master_port: every node must meet node 0 at the same port")
        for name in ("max_logprobs", "max_stop_strings", "pipeline_micro_batches"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ConfigError(f"max_model_len must be >= 2, got {self.max_model_len}")
        if self.cpu_threads is not None and (not isinstance(self.cpu_threads, int) or self.cpu_threads < 1):
            raise ConfigError(f"cpu_threads must be a positive integer, got {self.cpu_threads!r}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ConfigError(f"num_kv_blocks must be >= 1, got {self.num_kv_blocks}")
        if self.dtype not in _DTYPE_NAMES:
            raise ConfigError(f"dtype must be one of {sorted(_DTYPE_NAMES)}, got {self.dtype!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        if self.load_format not in ("auto", "dummy"):
            raise ConfigError(f"load_format must be auto or dummy, got {self.load_format!r}")
        if self.scheduling_policy not in ("fcfs", "priority"):
            raise ConfigError(f"scheduling_policy must be fcfs or priority, got {self.scheduling_policy!r}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.async_scheduling not in ("auto", "on", "off"):
            raise ConfigError(f"async_scheduling must be auto, on or off, got {self.async_scheduling!r}")
        if self.cpu_kv_cache_gb <= 0:
            raise ConfigError(f"cpu_kv_cache_gb must be > 0, got {self.cpu_kv_cache_gb}")
        if self.quantization is not None and self.quantization not in _QUANTIZATIONS:
            raise ConfigError(f"quantization must be one of {list(_QUANTIZATIONS)} or None, got {self.quantization!r}")
        if self.quantization_group_size not in (None, -1, 32, 64, 128, 256):
            raise ConfigError(
                "quantization_group_size must be 32, 64, 128, 256 or -1 (per channel), "
                f"got {self.quantization_group_size!r}"
            )
        if self.kv_cache_dtype not in ("auto", "fp8"):
            raise ConfigError(f"kv_cache_dtype must be auto or fp8, got {self.kv_cache_dtype!r}")
        if self.nvfp4_mode not in ("weight_only", "fp8"):
            raise ConfigError(f"nvfp4_mode must be weight_only or fp8, got {self.nvfp4_mode!r}")
        self.speculative_config = SpeculativeConfig.from_dict(self.speculative_config)
        if self.pipeline_micro_batches > 1 and self.speculative_config is not None:
            raise ConfigError(
                "speculative decoding runs one batch through the pipeline at a time (a verify step's tokens decide "
                "the next drafts): use pipeline_micro_batches 0 or 1 with speculative_config"
            )
        if self.pipeline_parallel_size > 1 and self.async_scheduling == "on":
            raise ConfigError(
                "pipeline_parallel_size > 1 overlaps batches its own way (one in flight per stage): use "
                "async_scheduling auto or off"
            )
        if self.speculative_config is not None and self.async_scheduling == "on":
            raise ConfigError(
                "async_scheduling on does not work with speculative_config yet (a verify step's tokens must be on "
                "the host before the next step is scheduled); use async_scheduling auto or off"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EngineConfig:
        """Build from a dict (e.g. a parsed YAML file), rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown engine option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


_QUANTIZATIONS = ("fp8", "int8", "int4", "nvfp4")
_DTYPE_NAMES = {"auto", "float32", "fp32", "float", "float16", "fp16", "half", "bfloat16", "bf16"}
