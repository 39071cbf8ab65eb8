"""Typed errors. Each message says what the caller should change."""

from __future__ import annotations


class ForgeLLMError(Exception):
    """Base class of every error forgellm raises on purpose."""


class InvalidRequestError(ForgeLLMError, ValueError):
    """A request (prompt, sampling values, ...) is malformed; `param` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ContextLengthError(InvalidRequestError):
    """The prompt, or prompt plus `max_tokens`, does not fit in the model's context."""


class CapacityError(ForgeLLMError):
    """The engine can never hold this request: it needs more KV cache than the whole cache."""


class QueueFullError(CapacityError):
    """The engine's waiting queue is full right now; the same request may succeed later."""


class RequestFailedError(ForgeLLMError):
    """The engine failed while serving this request (it goes on serving the others)."""


class ModelLoadError(ForgeLLMError):
    """A checkpoint cannot be loaded: unsupported architecture, bad shard, missing or extra tensors."""


class EngineDeadError(ForgeLLMError):
    """The engine loop failed and can no longer serve requests."""


class ConfigError(ForgeLLMError, ValueError):
    """An engine option is invalid; the message names the option and its allowed values."""
