"""forgellm: fast LLM inference in Python.

Start at `LLM` (llm.py) -> LLMEngine (engine/llm_engine.py) -> EngineCore.step (engine/core.py)
-> Scheduler / KVCacheManager -> ModelRunner -> models/llama.py -> kernels/.

The public names below load on first use (PEP 562), so `import forgellm` and `forgellm --help`
do not pay for importing torch; `from forgellm import LLM, SamplingParams` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "LLM": "forgellm.llm",
    "AsyncLLM": "forgellm.engine.async_engine",
    "CapacityError": "forgellm.errors",
    "CompletionOutput": "forgellm.outputs",
    "ConfigError": "forgellm.errors",
    "ContextLengthError": "forgellm.errors",
    "EngineConfig": "forgellm.config",
    "EngineDeadError": "forgellm.errors",
    "ForgeLLMError": "forgellm.errors",
    "InvalidRequestError": "forgellm.errors",
    "Logprob": "forgellm.outputs",
    "ModelLoadError": "forgellm.errors",
    "QueueFullError": "forgellm.errors",
    "RequestFailedError": "forgellm.errors",
    "RequestOutput": "forgellm.outputs",
    "SamplingParams": "forgellm.sampling_params",
}

__all__ = [
    "LLM",
    "AsyncLLM",
    "CapacityError",
    "CompletionOutput",
    "ConfigError",
    "ContextLengthError",
    "EngineConfig",
    "EngineDeadError",
    "ForgeLLMError",
    "InvalidRequestError",
    "Logprob",
    "ModelLoadError",
    "QueueFullError",
    "RequestFailedError",
    "RequestOutput",
    "SamplingParams",
    "__version__",
]

if TYPE_CHECKING:
    from forgellm.config import EngineConfig
    from forgellm.engine.async_engine import AsyncLLM
    from forgellm.errors import (
        CapacityError,
        ConfigError,
        ContextLengthError,
        EngineDeadError,
        ForgeLLMError,
        InvalidRequestError,
        ModelLoadError,
        QueueFullError,
        RequestFailedError,
    )
    from forgellm.llm import LLM
    from forgellm.outputs import CompletionOutput, Logprob, RequestOutput
    from forgellm.sampling_params import SamplingParams


def __getattr__(name: str) -> Any:
    """Import the module defining a public name on first access, and cache the name here."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'forgellm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
