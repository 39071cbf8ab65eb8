"""Request bodies of the OpenAI API (plus vLLM-style extensions), parsed with pydantic.

Unknown fields are rejected by name (extra="forbid"), as OpenAI does. Known fields the server cannot
honour yet are declared so that `check_supported` can name them in a 400 instead of ignoring them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from forgellm.errors import InvalidRequestError
from forgellm.sampling_params import SamplingParams


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class SamplingRequest(_Strict):
    """Fields shared by chat and completions: the model, sampling, stopping and streaming."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # an end-user id for the caller's own bookkeeping: accepted, unused
    logit_bias: dict[str, float] | None = None
    # Extensions, as vLLM users know them.
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool | None = None
    min_tokens: int | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool | None = None
    skip_special_tokens: bool | None = None

    def check_supported(self) -> None:
        """Raise a 400-worthy error naming the first field the server would otherwise ignore."""
        if self.logit_bias:
            raise InvalidRequestError("logit_bias is not supported yet", "logit_bias")
        if self.stream_options is not None and not self.stream:
            raise InvalidRequestError("stream_options is only allowed when stream is true", "stream_options")

    def max_new_tokens(self) -> int | None:
        return self.max_tokens

    def logprobs_k(self) -> int | None:
        """How many alternatives per position to return logprobs for (None: no logprobs)."""
        return None

    def sampling_params(self, defaults: SamplingParams) -> SamplingParams:
        """SamplingParams: the model's defaults, overridden by every field the request set."""
        values: dict[str, Any] = {
            "temperature": defaults.temperature,
            "top_p": defaults.top_p,
            "top_k": defaults.top_k,
            "min_p": defaults.min_p,
            "repetition_penalty": defaults.repetition_penalty,
        }
        names = (
            "temperature top_p n stop seed presence_penalty frequency_penalty top_k min_p repetition_penalty "
            "ignore_eos min_tokens stop_token_ids include_stop_str_in_output skip_special_tokens"
        ).split()
        values.update({name: getattr(self, name) for name in names if getattr(self, name) is not None})
        values["max_tokens"] = self.max_new_tokens()  # None: until the context is full
        values["logprobs"] = self.logprobs_k()
        return SamplingParams(**values)


class ContentPart(BaseModel):
    """One part of a message's content; only {"type": "text"} parts are supported."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(_Strict):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    # What the openai client puts in an assistant message it returns, so a conversation can be
    # sent back as it came; only empty values are accepted.
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None
    function_call: Any = None
    refusal: str | None = None
    annotations: list[Any] | None = None
    audio: Any = None
    reasoning_content: str | None = None


_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    # OpenAI fields accepted only at their "off" value (checked in check_supported).
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    web_search_options: Any = None

    def check_supported(self) -> None:
        super().check_supported()
        for name in ("tools", "functions", "audio", "prediction", "reasoning_effort", "web_search_options"):
            if getattr(self, name):
                raise InvalidRequestError(f"{name} is not supported yet", name)
        if self.tool_choice not in (None, "none"):
            raise InvalidRequestError("tool_choice is not supported yet (no tools)", "tool_choice")
        if self.function_call not in (None, "none"):
            raise InvalidRequestError("function_call is not supported yet", "function_call")
        if self.response_format is not None and self.response_format.get("type", "text") != "text":
            raise InvalidRequestError(
                f"response_format {self.response_format.get('type')!r} is not supported yet; only 'text'",
                "response_format",
            )
        if self.modalities not in (None, ["text"]):
            raise InvalidRequestError("only the 'text' modality is supported", "modalities")
        if self.store:
            raise InvalidRequestError("store is not supported: this server keeps no completions", "store")
        if self.service_tier not in (None, "auto", "default"):
            raise InvalidRequestError("service_tier is not supported; use 'auto' or leave it out", "service_tier")
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequestError("top_logprobs needs logprobs set to true", "top_logprobs")
        if self.top_logprobs is not None and not 0 <= self.top_logprobs <= 20:
            raise InvalidRequestError(f"top_logprobs must be in [0, 20], got {self.top_logprobs}", "top_logprobs")
        for i, message in enumerate(self.messages):
            _check_message(message, f"messages.{i}")

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def logprobs_k(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def template_messages(self) -> list[dict[str, Any]]:
        """The conversation as chat templates expect it: role names and plain-string content."""
        result = []
        for message in self.messages:
            content = message.content
            if isinstance(content, list):  # text parts join into one string, as vLLM does
                content = "\n".join(part.text or "" for part in content)
            entry: dict[str, Any] = {"role": _ROLES[message.role], "content": content or ""}
            if message.name is not None:
                entry["name"] = message.name
            result.append(entry)
        return result


def _check_message(message: ChatMessage, where: str) -> None:
    if message.role not in _ROLES:
        raise InvalidRequestError(
            f"message role {message.role!r} is not supported; use one of {sorted(_ROLES)}", f"{where}.role"
        )
    for name in ("tool_calls", "tool_call_id", "function_call", "audio"):
        if getattr(message, name):
            raise InvalidRequestError(f"{name} in messages is not supported yet", f"{where}.{name}")
    if isinstance(message.content, list):
        for j, part in enumerate(message.content):
            if part.type != "text" or part.text is None:
                raise InvalidRequestError(
                    f"content part type {part.type!r} is not supported yet; only text parts", f"{where}.content.{j}"
                )


class CompletionRequest(SamplingRequest):
    # StrictInt/StrictStr: a list of token ids must not be read as a list of numeric strings.
    prompt: StrictStr | list[StrictInt] | list[StrictStr] | list[list[StrictInt]]
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo:
            raise InvalidRequestError("echo is not supported yet", "echo")
        if self.suffix:
            raise InvalidRequestError("suffix is not supported (no insertion models)", "suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidRequestError("best_of is not supported; use n", "best_of")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise InvalidRequestError(f"logprobs must be in [0, 20], got {self.logprobs}", "logprobs")
        if isinstance(self.prompt, list) and not self.prompt:
            raise InvalidRequestError("prompt is an empty list; give at least one prompt", "prompt")

    def prompts(self) -> list[str | list[int]]:
        """The prompts: one string, a list of strings, one token-id list or several."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if all(isinstance(p, int) for p in self.prompt):
            return [list(self.prompt)]  # type: ignore[arg-type]
        return list(self.prompt)  # type: ignore[arg-type]

    def logprobs_k(self) -> int | None:
        return self.logprobs


class TokenizeRequest(_Strict):
    """Either `prompt` (text) or `messages` (rendered with the chat template first)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(_Strict):
    model: str | None = None
    tokens: list[StrictInt]
