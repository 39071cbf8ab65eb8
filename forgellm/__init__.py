"""forgellm: fast LLM inference in Python.

Start at `LLM` (llm.py) -> LLMEngine (engine/llm_engine.py) -> EngineCore.step (engine/core.py)
-> Scheduler / KVCacheManager -> ModelRunner -> models/llama.py -> kernels/.
"""

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
)
from forgellm.llm import LLM
from forgellm.outputs import CompletionOutput, Logprob, RequestOutput
from forgellm.sampling_params import SamplingParams

__version__ = "0.1.0"

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
    "RequestOutput",
    "SamplingParams",
    "__version__",
]
