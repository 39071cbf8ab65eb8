"""What every offline benchmark shares: model selection flags, the engine, its description, request params."""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING, Any

from forgellm.cli.engine_args import add_engine_args, engine_config_from_args
from forgellm.config import EngineConfig
from forgellm.errors import ConfigError
from forgellm.models.presets import PRESETS, preset_dir
from forgellm.sampling_params import SamplingParams

if TYPE_CHECKING:  # the engine pulls in torch; `--help` should not pay for it
    from forgellm.engine.llm_engine import LLMEngine


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """`--model-config NAME`, `--random-weights`, `--temperature`, `--disable-tqdm`, then the engine flags."""
    group = parser.add_argument_group("model selection")
    group.add_argument(
        "--model-config",
        metavar="NAME",
        default=None,
        choices=PRESETS,
        help=f"a built-in model shape instead of --model ({', '.join(PRESETS)}); needs --random-weights",
    )
    group.add_argument(
        "--random-weights",
        action="store_true",
        help="random weights from config.json alone (no checkpoint read): load_format=dummy",
    )
    group.add_argument(
        "--temperature", type=float, default=1.0, help="sampling temperature of every request (default: 1.0)"
    )
    group.add_argument("--disable-tqdm", action="store_true", help="no progress bar")
    add_engine_args(parser)


def engine_config_from_bench_args(args: argparse.Namespace) -> EngineConfig:
    """EngineConfig from the engine flags plus `--model-config` / `--random-weights`."""
    config = engine_config_from_args(args)
    changes: dict[str, Any] = {}
    if args.model_config is not None:
        if config.model is not None:
            raise ConfigError("give either --model PATH or --model-config NAME, not both")
        if not args.random_weights:
            raise ConfigError(f"--model-config {args.model_config} is a shape without weights; add --random-weights")
        changes["model"] = str(preset_dir(args.model_config))
    if args.random_weights:
        changes["load_format"] = "dummy"
    # replace() validates the result again.
    return dataclasses.replace(config, **changes) if changes else config


def model_label(args: argparse.Namespace, config: EngineConfig) -> str:
    """How reports name the model: the preset, the checkpoint path, or 'demo'."""
    label = args.model_config or config.model or "demo"
    return f"{label} (random weights)" if args.random_weights else label


def build_engine(config: EngineConfig) -> LLMEngine:
    """Load the engine (imported here so argument errors come before torch is loaded)."""
    from forgellm.engine.llm_engine import LLMEngine

    return LLMEngine(config)


def device_name(device: Any) -> str:
    """'NVIDIA H200' for a CUDA device, 'cpu' otherwise."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def describe_engine(engine: LLMEngine) -> dict[str, str]:
    """Device, dtype and architecture of a loaded engine, for the header of every report."""
    runner = engine.core.runner
    return {
        "device": device_name(runner.device),
        "dtype": str(runner.dtype).removeprefix("torch."),
        "architecture": engine.arch.architecture,
    }


def bench_sampling_params(output_len: int, temperature: float = 1.0) -> SamplingParams:
    """Exactly `output_len` tokens (EOS ignored), token ids only (no detokenization)."""
    # Benchmark prompts are random ids: their text is noise, and decoding it would add host time.
    return SamplingParams(temperature=temperature, max_tokens=output_len, ignore_eos=True, detokenize=False)


def vocab_size(engine: LLMEngine) -> int:
    """Token ids of random prompts are drawn below this."""
    return engine.arch.vocab_size
