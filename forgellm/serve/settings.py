"""ServerSettings: the options of the HTTP layer (the engine's own live in EngineConfig)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_MAX_REQUEST_BYTES = 32 * 2**20  # far above any prompt that fits a context; stops abuse
DEFAULT_MAX_PROMPTS_PER_REQUEST = 256  # prompts in one /v1/completions call
DEMO_MODEL_NAME = "forgellm-demo"


@dataclass(frozen=True)
class ServerSettings:
    """Model names clients may ask for, the API key, and the HTTP limits (the engine admits the rest)."""

    served_model_names: tuple[str, ...] = (DEMO_MODEL_NAME,)
    api_key: str | None = None
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_prompts_per_request: int = DEFAULT_MAX_PROMPTS_PER_REQUEST
    # /v1/responses keeps past conversations in memory for previous_response_id: this many, this long.
    response_store_size: int = 1000
    response_store_ttl_s: float = 3600.0
    # The served model family's tool-call syntax (forgellm.serve.tool_parsers); hermes is the demo's.
    tool_call_parser: str = "hermes"
    # A reasoning model's <think> syntax (forgellm.serve.reasoning_parsers): qwen3, deepseek_r1, or None.
    reasoning_parser: str | None = None

    def __post_init__(self) -> None:
        if not self.served_model_names:
            raise ValueError("served_model_names needs at least one name")
        if self.max_prompts_per_request < 1:
            raise ValueError(f"max_prompts_per_request must be >= 1, got {self.max_prompts_per_request}")
        if self.max_request_bytes < 1:
            raise ValueError(f"max_request_bytes must be >= 1, got {self.max_request_bytes}")
        from forgellm.serve.reasoning_parsers import REASONING_PARSERS
        from forgellm.serve.tool_parsers import TOOL_PARSERS

        if self.reasoning_parser is not None and self.reasoning_parser not in REASONING_PARSERS:
            raise ValueError(
                f"reasoning_parser must be one of {sorted(REASONING_PARSERS)} or None, got {self.reasoning_parser!r}"
            )
        if self.tool_call_parser not in TOOL_PARSERS:
            raise ValueError(f"tool_call_parser must be one of {sorted(TOOL_PARSERS)}, got {self.tool_call_parser!r}")
        if self.response_store_size < 0 or self.response_store_ttl_s <= 0:
            raise ValueError("response_store_size must be >= 0 and response_store_ttl_s > 0")

    @property
    def model_name(self) -> str:
        """The name responses carry: the first served name."""
        return self.served_model_names[0]


def default_model_name(model: str | None) -> str:
    """The name a model is served under when none is given: its directory's name."""
    return DEMO_MODEL_NAME if model is None else Path(model).expanduser().resolve().name
