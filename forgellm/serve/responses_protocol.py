"""The request body of POST /v1/responses (OpenAI's Responses API), parsed with pydantic.

Like the other bodies (protocol.py) unknown fields are refused by name, and the known OpenAI fields
the server cannot honour yet are accepted only at their "off" value, so `check_supported` can name
them in a 400. Numbers and booleans are strict: "temperature": "0.5" is a 400, not a 0.5.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, StrictBool, StrictFloat, StrictInt

from forgellm.errors import InvalidRequestError
from forgellm.sampling_params import SamplingParams
from forgellm.serve.output_constraints import naming_constraint_errors, response_format_constraint
from forgellm.serve.protocol import _ROLES, _doc, _Strict, model_sampling_defaults

_TOOLS_LATER = "are not served on /v1/responses yet; use /v1/chat/completions, which serves them"


class InputText(_Strict):
    """A text part of a message: `input_text`, or `output_text` in an assistant turn sent back."""

    type: Literal["input_text", "output_text"]
    text: str
    # What an output_text part of a returned response carries, so it can be sent back as it came.
    annotations: list[Any] | None = _doc(maxItems=0)
    logprobs: list[Any] | None = None


class InputMessage(_Strict):
    """One message item of `input`; `id` and `status` are what output items carry when sent back."""

    type: Literal["message"] | None = None
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[InputText]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    def text(self) -> str:
        """The content as one string: text parts join with newlines, as chat content parts do."""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class TextConfig(_Strict):
    """`text`: the output format: plain text (the default), any JSON object, or a JSON schema (constrained)."""

    format: dict[str, Any] | None = _doc(
        required=["type"],
        properties={"type": {"enum": ["text", "json_object", "json_schema"]}, "schema": {"type": "object"}},
    )
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesRequest(_Strict):
    """POST /v1/responses: a conversation (`instructions`, earlier turns by `previous_response_id`,
    then `input`) answered by one assistant message."""

    model: str | None = None
    input: str | list[InputMessage] = Field(json_schema_extra={"minLength": 1, "minItems": 1})
    instructions: str | None = None
    max_output_tokens: StrictInt | None = _doc(minimum=1)
    temperature: StrictFloat | None = _doc(minimum=0)
    top_p: StrictFloat | None = _doc(exclusiveMinimum=0, maximum=1)
    stream: StrictBool = False
    previous_response_id: str | None = None
    store: StrictBool = True
    metadata: dict[str, str] | None = None
    user: str | None = None  # an end-user id for the caller's own bookkeeping: accepted, unused
    # OpenAI fields accepted only at their "off" value (checked in check_supported).
    tools: list[Any] | None = _doc(maxItems=0)
    tool_choice: Literal["none", "auto"] | None = None
    parallel_tool_calls: StrictBool | None = None
    text: TextConfig | None = None
    truncation: Literal["disabled"] | None = None
    include: list[str] | None = _doc(maxItems=0)
    service_tier: Literal["auto", "default"] | None = None
    background: StrictBool | None = _doc(enum=[False, None])

    def check_supported(self) -> None:
        """Raise a 400-worthy error naming the first field the server would otherwise ignore."""
        if self.tools:
            raise InvalidRequestError(f"tools {_TOOLS_LATER}", "tools")
        self.output_constraint()  # a bad text.format is refused here, before anything runs
        if self.include:
            raise InvalidRequestError("include is not supported: responses carry no extra outputs", "include")
        if self.background:
            raise InvalidRequestError("background is not supported; stream instead", "background")
        if isinstance(self.input, str):
            if not self.input:
                raise InvalidRequestError("input is empty; give the text to answer", "input")
        elif not self.input:
            raise InvalidRequestError("input is an empty list; give at least one message", "input")
        # Named here, not by SamplingParams, whose message would say max_tokens.
        if self.max_output_tokens is not None and self.max_output_tokens < 1:
            raise InvalidRequestError(
                f"max_output_tokens must be at least 1, got {self.max_output_tokens}", "max_output_tokens"
            )

    def sampling_params(self, defaults: SamplingParams) -> SamplingParams:
        """SamplingParams as chat's: the model's defaults, overridden by what the request set."""
        values = model_sampling_defaults(defaults)
        if self.temperature is not None:
            values["temperature"] = self.temperature
        if self.top_p is not None:
            values["top_p"] = self.top_p
        values["max_tokens"] = self.max_output_tokens  # None: until the context is full
        with naming_constraint_errors("text.format"):
            return SamplingParams(**values, structured_outputs=self.output_constraint())

    def output_constraint(self) -> dict[str, Any] | None:
        """text.format as a structured-output constraint (None for plain text). The Responses API writes a
        json_schema format flat ({"type": "json_schema", "name": ..., "schema": {...}}), unlike chat."""
        fmt = self.text.format if self.text is not None else None
        if fmt is None:
            return None
        kind = fmt.get("type")
        if kind == "json_schema":
            if not isinstance(fmt.get("schema"), dict):
                raise InvalidRequestError("text.format json_schema needs schema, a JSON schema object", "text.format")
            return {"json": fmt["schema"]}
        return response_format_constraint(fmt, "text.format")

    def input_messages(self) -> list[dict[str, str]]:
        """`input` as chat-template messages (role names as chat's, plain-string content)."""
        if isinstance(self.input, str):
            return [{"role": "user", "content": self.input}]
        return [{"role": _ROLES[m.role], "content": m.text()} for m in self.input]
