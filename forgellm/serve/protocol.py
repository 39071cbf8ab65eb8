"""Request bodies of the OpenAI API (plus vLLM-style extensions), parsed with pydantic.

Unknown fields are rejected by name (extra="forbid"), as OpenAI does. Known fields the server cannot
honour yet are declared so that `check_supported` can name them in a 400 instead of ignoring them.

The routes parse bodies themselves (ServerContext.parse: 400s in OpenAI's shape, not FastAPI's 422s),
so FastAPI cannot see the models: openapi.py describes them, and the responses, to /openapi.json. `_doc` fields tell the
schema what the server's own checks enforce (ranges, values accepted only when off) without changing
what pydantic checks, so error messages stay those of SamplingParams, check_supported and the engine.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator
from pydantic_core import PydanticCustomError

from forgellm.errors import InvalidRequestError
from forgellm.sampling_params import SEED_MAX, SEED_MIN, SamplingParams
from forgellm.serve.output_constraints import naming_constraint_errors, response_format_constraint
from forgellm.serve.tools import TOOL_CHOICE_SCHEMA, TOOL_SCHEMA, check_tools


def _doc(default: Any = None, **schema: Any) -> Any:
    """A field with `default` whose JSON schema also states `schema` (checked by the server, not pydantic)."""
    return Field(default, json_schema_extra=schema)


def _replace(schema: dict[str, Any], documented: dict[str, Any]) -> None:
    """As json_schema_extra: document a field as `documented`, narrower than what pydantic takes."""
    schema.clear()
    schema.update(documented)


# Values that are accepted only when empty: JSON Schema's "this key is off".
_NULL: dict[str, Any] = {"type": "null"}
# A token id: openapi_schemas replaces the marker with the vocabulary's last id as the maximum.
VOCAB_MARKER = "x-forgellm-token-id"
_TOKEN_ID: dict[str, Any] = {"minimum": 0, VOCAB_MARKER: True}
# logit_bias keys: a token id in decimal, as OpenAI's clients write it (no sign, no leading zeros).
_TOKEN_ID_KEY = re.compile(r"^(0|[1-9][0-9]{0,9})$")


def _token_id_keys(bias: dict[str, float]) -> dict[int, float]:
    """logit_bias with integer keys; a key that is not a token id in decimal is a 400 naming logit_bias."""
    bad = next((key for key in bias if not _TOKEN_ID_KEY.fullmatch(key)), None)
    if bad is not None:
        raise InvalidRequestError(
            f'logit_bias keys must be token ids in decimal (e.g. "1234"), got {bad!r}', "logit_bias"
        )
    return {int(key): value for key, value in bias.items()}


# JSON may escape half of a UTF-16 pair alone ("\ud800"): Python decodes it to a str that is not
# Unicode text, which the tokenizer refuses with a TypeError (and UTF-8 cannot encode).
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _holds_lone_surrogate(value: Any) -> bool:
    """Whether any string in `value` (a JSON value, or a model such as a content part) holds one.

    A loop, not recursion: a body nested as deep as JSON allows must not overflow the stack.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _LONE_SURROGATE.search(item) is not None:
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, BaseModel):  # extra fields included
            stack.extend(item.__dict__.values())
            stack.extend((item.__pydantic_extra__ or {}).values())
    return False


class _Strict(BaseModel):
    """Unknown fields are refused, and every string must be Unicode text (a 400 naming the field).

    Strict types, as vLLM's and OpenAI's servers: "5" is no integer, "true" and 1 are no boolean,
    true is no number, and 1.0 is no integer (an integer is taken for a number). Lax parsing would
    coerce them silently, and the schema in /openapi.json calls them invalid.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*")
    @classmethod
    def _unicode_text(cls, value: Any) -> Any:
        if _holds_lone_surrogate(value):
            raise PydanticCustomError(
                "lone_surrogate", "the text holds a lone UTF-16 surrogate (\\ud800 to \\udfff), which is not Unicode"
            )
        return value


class StreamOptions(_Strict):
    include_usage: bool = Field(False, description="a last chunk, with no choices, carries the usage")
    # vLLM's extension, which benchmark clients such as guidellm send.
    continuous_usage_stats: bool = Field(
        False, description="every chunk carries the usage so far (completion tokens up to that chunk)"
    )


def model_sampling_defaults(defaults: SamplingParams) -> dict[str, Any]:
    """The sampling values a model's generation_config.json sets, which a request's own values override."""
    names = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
    return {name: getattr(defaults, name) for name in names}


class SamplingRequest(_Strict):
    """Fields shared by chat and completions: the model, sampling, stopping and streaming."""

    model_config = ConfigDict(
        json_schema_extra={  # stream_options only with stream: true
            "if": {"required": ["stream_options"], "properties": {"stream_options": {"type": "object"}}},
            "then": {"required": ["stream"], "properties": {"stream": {"const": True}}},
        }
    )

    model: str | None = None
    max_tokens: int | None = _doc(minimum=1)
    temperature: float | None = _doc(minimum=0)
    top_p: float | None = _doc(exclusiveMinimum=0, maximum=1)
    n: int = _doc(1, minimum=1)
    stop: str | list[str] | None = _doc(minLength=1, items={"type": "string", "minLength": 1})
    seed: int | None = _doc(minimum=SEED_MIN, maximum=SEED_MAX)
    presence_penalty: float | None = _doc(minimum=-2, maximum=2)
    frequency_penalty: float | None = _doc(minimum=-2, maximum=2)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # an end-user id for the caller's own bookkeeping: accepted, unused
    # OpenAI's: token id (a decimal string) -> bias added to its logit.
    logit_bias: dict[str, float] | None = _doc(
        maxProperties=1024,
        propertyNames={"pattern": _TOKEN_ID_KEY.pattern},
        additionalProperties={"type": "number", "minimum": -100, "maximum": 100},
    )
    # Extensions, as vLLM users know them.
    top_k: int | None = _doc(minimum=-1)  # -1 and 0 mean off
    min_p: float | None = _doc(minimum=0, maximum=1)
    repetition_penalty: float | None = _doc(exclusiveMinimum=0)
    ignore_eos: bool | None = None
    min_tokens: int | None = _doc(minimum=0)
    stop_token_ids: list[int] | None = _doc(items=_TOKEN_ID)
    include_stop_str_in_output: bool | None = None
    skip_special_tokens: bool | None = None
    # vLLM's: the logprobs of each prompt token (after the first) and of its top alternatives.
    prompt_logprobs: int | None = _doc(minimum=0)
    # vLLM's logit controls: the only tokens that may be sampled; words never to produce.
    allowed_token_ids: list[int] | None = _doc(minItems=1, items=_TOKEN_ID)
    bad_words: list[str] | None = _doc(items={"type": "string", "minLength": 1})
    # Output constraints: OpenAI's response_format, vLLM's guided_* fields and its newer structured_outputs
    # object (the keys of forgellm's StructuredOutputsParams); at most one of them.
    response_format: dict[str, Any] | None = _doc(
        required=["type"],
        properties={
            "type": {"enum": ["text", "json_object", "json_schema"]},
            "json_schema": {"type": "object", "properties": {"schema": {"type": "object"}}},
        },
    )
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = _doc(minLength=1)
    guided_choice: list[str] | None = _doc(minItems=1, items={"type": "string", "minLength": 1})
    guided_grammar: str | None = _doc(minLength=1)
    structured_outputs: dict[str, Any] | None = None

    def check_supported(self) -> None:
        """Raise a 400-worthy error naming the first field the server would otherwise ignore."""
        if self.prompt_logprobs is not None and self.prompt_logprobs < 0:  # vLLM's -1 (whole vocabulary) too
            raise InvalidRequestError(f"prompt_logprobs must be >= 0, got {self.prompt_logprobs}", "prompt_logprobs")
        if self.prompt_logprobs is not None and self.stream:
            # As vLLM: a stream has no place for them (echo with logprobs shows them in a completion).
            raise InvalidRequestError("prompt_logprobs is not available when stream is true", "prompt_logprobs")
        if self.stream_options is not None and not self.stream:
            raise InvalidRequestError("stream_options is only allowed when stream is true", "stream_options")

    def max_new_tokens(self) -> int | None:
        return self.max_tokens

    def logprobs_k(self) -> int | None:
        """How many alternatives per position to return logprobs for (None: no logprobs)."""
        return None

    def prompt_logprobs_k(self) -> int | None:
        """How many alternatives per prompt position the engine must score (None: none)."""
        return self.prompt_logprobs

    def sampling_params(self, defaults: SamplingParams) -> SamplingParams:
        """SamplingParams: the model's defaults, overridden by every field the request set."""
        values = model_sampling_defaults(defaults)
        names = (
            "temperature top_p n stop seed presence_penalty frequency_penalty top_k min_p repetition_penalty "
            "ignore_eos min_tokens stop_token_ids include_stop_str_in_output skip_special_tokens allowed_token_ids "
            "bad_words"
        ).split()
        values.update({name: getattr(self, name) for name in names if getattr(self, name) is not None})
        if self.logit_bias:
            values["logit_bias"] = _token_id_keys(self.logit_bias)
        values["max_tokens"] = self.max_new_tokens()  # None: until the context is full
        values["logprobs"] = self.logprobs_k()
        values["prompt_logprobs"] = self.prompt_logprobs_k()
        constraint = self.output_constraint()
        with naming_constraint_errors(self.constraint_field):
            return SamplingParams(**values, structured_outputs=constraint)

    @property
    def constraint_field(self) -> str:
        """The request field that set the output constraint (errors about it name this field)."""
        given = self._constraints()
        return given[0][0] if given else "structured_outputs"

    def output_constraint(self) -> dict[str, Any] | None:
        """The output constraint as StructuredOutputsParams' dict, from whichever field set it (at most one)."""
        given = self._constraints()
        if len(given) > 1:
            names = ", ".join(name for name, _ in given)
            raise InvalidRequestError(f"give at most one output constraint, got {names}", given[1][0])
        return given[0][1] if given else None

    def _constraints(self) -> list[tuple[str, dict[str, Any]]]:
        given = []
        if self.response_format is not None:
            constraint = response_format_constraint(self.response_format)
            if constraint is not None:
                given.append(("response_format", constraint))
        for field, key in (("guided_json", "json"), ("guided_regex", "regex"), ("guided_choice", "choice"),
                           ("guided_grammar", "grammar")):  # fmt: skip
            value = getattr(self, field)
            if value is not None:
                given.append((field, {key: value}))
        if self.structured_outputs is not None:
            given.append(("structured_outputs", dict(self.structured_outputs)))
        return given


_IMAGE_URL: dict[str, Any] = {
    "type": "object",
    "required": ["url"],
    "properties": {"url": {"type": "string", "minLength": 1}, "detail": {"enum": ["auto", "low", "high"]}},
}


class ContentPart(BaseModel):
    """One part of a message's content: {"type": "text", "text": ...} or, for a vision-language model,
    {"type": "image_url", "image_url": {"url": ...}} (a data URL; files and hosts the server allows)."""

    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra={"required": ["type"]})
    type: str = Field(json_schema_extra={"enum": ["text", "image_url"]})
    text: str | None = Field(None, json_schema_extra=lambda schema: _replace(schema, {"type": "string"}))
    image_url: Any = _doc(**_IMAGE_URL)

    def template_part(self) -> dict[str, Any]:
        """The part as chat templates (and forgellm.multimodal.chat_content) read it."""
        if self.type == "image_url":
            return {"type": "image_url", "image_url": {"url": self.image_url["url"]}}
        return {"type": "text", "text": self.text or ""}


_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
# An assistant message's tool call, as the openai client sends a conversation back.
_TOOL_CALL: dict[str, Any] = {
    "type": "object",
    "required": ["type", "function"],
    "properties": {
        "id": {"type": "string"},
        "type": {"enum": ["function"]},
        "function": {
            "type": "object",
            "required": ["name", "arguments"],
            "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}},
        },
    },
}


class ChatMessage(_Strict):
    role: str = Field(json_schema_extra={"enum": list(_ROLES)})
    content: str | list[ContentPart] | None = None
    name: str | None = None
    # An assistant message's calls, and the id of the call a tool message answers.
    tool_calls: list[Any] | None = _doc(items=_TOOL_CALL)
    tool_call_id: str | None = None
    function_call: Any = _doc(**_NULL)
    refusal: str | None = None
    annotations: list[Any] | None = None
    audio: Any = _doc(**_NULL)
    reasoning_content: str | None = None


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = _doc(minimum=1)
    logprobs: bool = False
    top_logprobs: int | None = _doc(minimum=0, maximum=20)
    # vLLM's: extra variables for the chat template (e.g. {"enable_thinking": false} for Qwen3).
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[Any] | None = _doc(items=TOOL_SCHEMA)
    tool_choice: Any = _doc(anyOf=[*TOOL_CHOICE_SCHEMA["anyOf"], {"type": "null"}])
    # OpenAI fields accepted only at their "off" value (checked in check_supported).
    functions: list[Any] | None = _doc(maxItems=0)
    function_call: Any = _doc(enum=["none", None])
    parallel_tool_calls: bool | None = None
    modalities: list[str] | None = _doc(items={"enum": ["text"]}, minItems=1, maxItems=1)
    audio: Any = _doc(**_NULL)
    prediction: Any = _doc(**_NULL)
    reasoning_effort: str | None = _doc(maxLength=0)
    store: bool | None = _doc(enum=[False, None])
    metadata: dict[str, str] | None = None
    service_tier: str | None = _doc(enum=["auto", "default", None])
    web_search_options: Any = _doc(**_NULL)

    def check_supported(self) -> None:
        super().check_supported()
        for name in ("functions", "audio", "prediction", "reasoning_effort", "web_search_options"):
            if getattr(self, name):
                raise InvalidRequestError(f"{name} is not supported yet", name)
        check_tools(self.tools, self.tool_choice)
        reserved = sorted(set(self.chat_template_kwargs or ()) & {"messages", "tools", "add_generation_prompt"})
        if reserved:
            raise InvalidRequestError(
                f"chat_template_kwargs may not set {reserved}: the request's own fields do", "chat_template_kwargs"
            )
        if self.function_call not in (None, "none"):
            raise InvalidRequestError("function_call is not supported yet", "function_call")
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
            if isinstance(content, list) and any(part.type == "image_url" for part in content):
                content = [part.template_part() for part in content]  # images stay parts, in place
            elif isinstance(content, list):  # text parts join into one string, as vLLM does
                content = "\n".join(part.text or "" for part in content)
            entry: dict[str, Any] = {"role": _ROLES[message.role], "content": content or ""}
            if message.name is not None:
                entry["name"] = message.name
            if message.tool_calls:  # templates read the arguments as a mapping, as transformers passes them
                entry["tool_calls"] = [_template_tool_call(call) for call in message.tool_calls]
            if message.tool_call_id is not None:
                entry["tool_call_id"] = message.tool_call_id
            result.append(entry)
        return result


def _template_tool_call(call: dict[str, Any]) -> dict[str, Any]:
    function = call["function"]
    try:
        arguments = json.loads(function["arguments"])
    except json.JSONDecodeError:
        arguments = function["arguments"]
    entry = {"type": "function", "function": {"name": function["name"], "arguments": arguments}}
    return entry | ({"id": call["id"]} if "id" in call else {})


def _check_message(message: ChatMessage, where: str) -> None:
    if message.role not in _ROLES:
        raise InvalidRequestError(
            f"message role {message.role!r} is not supported; use one of {sorted(_ROLES)}", f"{where}.role"
        )
    # As documented: empty tool_calls / tool_call_id pass (the openai client sends them back), while
    # function_call and audio must be null (an empty string is no "off" for them).
    for i, call in enumerate(message.tool_calls or []):
        function = call.get("function") if isinstance(call, dict) else None
        if not (isinstance(function, dict) and isinstance(function.get("name"), str)
                and isinstance(function.get("arguments"), str) and call.get("type") == "function"):  # fmt: skip
            raise InvalidRequestError(
                'a tool call must be {"type": "function", "function": {"name": ..., "arguments": "<JSON text>"}}',
                f"{where}.tool_calls.{i}",
            )
    unsupported = [name for name in ("function_call", "audio") if getattr(message, name) is not None]
    if unsupported:
        raise InvalidRequestError(f"{unsupported[0]} in messages is not supported yet", f"{where}.{unsupported[0]}")
    if isinstance(message.content, list):
        for j, part in enumerate(message.content):
            if part.type == "image_url":
                url = part.image_url.get("url") if isinstance(part.image_url, dict) else None
                if not isinstance(url, str) or not url:
                    raise InvalidRequestError(
                        'an image_url part must be {"type": "image_url", "image_url": {"url": "data:image/...'
                        ';base64,..."}}',
                        f"{where}.content.{j}.image_url",
                    )
            elif part.type != "text" or part.text is None:
                raise InvalidRequestError(
                    f"content part type {part.type!r} is not supported; send text or image_url parts",
                    f"{where}.content.{j}",
                )


class CompletionRequest(SamplingRequest):
    # StrictInt/StrictStr: a list of token ids must not be read as a list of numeric strings.
    # Not empty, and no prompt in a list empty: one set of keywords for the four shapes (minLength
    # applies to strings only, minItems to lists, minimum and maximum to numbers).
    prompt: StrictStr | list[StrictInt] | list[StrictStr] | list[list[StrictInt]] = Field(
        json_schema_extra={
            "minLength": 1,
            "minItems": 1,
            "items": {"minLength": 1, "minItems": 1, **_TOKEN_ID, "items": _TOKEN_ID},
        }
    )
    # 0 is allowed with echo (lm-eval scores a text that way); check_supported refuses it otherwise.
    max_tokens: int | None = _doc(minimum=0, description="at least 1; 0 only with echo: true (score the prompt)")
    echo: bool = False  # the prompt is returned before the completion (and its logprobs, with logprobs)
    logprobs: int | None = _doc(minimum=0, maximum=20)
    suffix: str | None = _doc(maxLength=0)
    best_of: int | None = None  # only equal to n

    def check_supported(self) -> None:
        super().check_supported()
        if self.max_tokens == 0 and not self.echo:
            raise InvalidRequestError("max_tokens must be >= 1 (0 is allowed only with echo), got 0", "max_tokens")
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

    def echo_only(self) -> bool:
        """echo with max_tokens 0: the answer is the prompt alone (how lm-eval scores a text)."""
        return self.echo and self.max_tokens == 0

    def max_new_tokens(self) -> int | None:
        # The engine generates at least one token: echo_only runs with 1 and the route drops it.
        return 1 if self.echo_only() else self.max_tokens

    def prompt_logprobs_k(self) -> int | None:
        """echo with logprobs=k needs the prompt scored with k alternatives too (as vLLM does)."""
        if not self.echo or self.logprobs is None:
            return self.prompt_logprobs
        return max(self.logprobs, self.prompt_logprobs or 0)


class TokenizeRequest(_Strict):
    """Either `prompt` (text) or `messages` (rendered with the chat template first)."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": ["prompt"], "properties": {"prompt": {"type": "string"}, "messages": _NULL}},
                {"required": ["messages"], "properties": {"messages": {"type": "array"}, "prompt": _NULL}},
            ]
        }
    )

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = _doc(minItems=1)
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(_Strict):
    model: str | None = None
    tokens: list[StrictInt] = Field(json_schema_extra={"items": {"type": "integer", **_TOKEN_ID}})
