"""Render Hugging Face chat templates (jinja2) the way transformers does.

Templates come from the Hub and are untrusted code: they run in jinja's immutable sandbox, and everything
they see is rebuilt from plain JSON types first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar

import jinja2
import jinja2.nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from forgellm.errors import InvalidRequestError

# Names a message's reasoning may come under; templates read `reasoning_content` (most) or `thinking`.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def compile_chat_template(source: str) -> jinja2.Template:
    """Compile a chat template in the sandbox; a syntax error raises jinja2.TemplateSyntaxError."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = _SafeNamespace
    env.globals["dict"] = _make_dict
    return env.from_string(source)


def render_chat_template(
    template: jinja2.Template,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
    documents: list[dict[str, Any]] | None = None,
    **variables: Any,
) -> str:
    """Render `messages` with `template`; `variables` (special tokens, extra kwargs) become template globals.

    Keys whose value is None are dropped from each message, as transformers does, because templates test
    for a key's presence rather than for None. Template errors raise InvalidRequestError.
    """
    if not messages:
        raise InvalidRequestError("cannot apply a chat template to an empty conversation", param="messages")
    chat = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise InvalidRequestError(f"chat messages must be objects, got {message!r}", param="messages")
        chat.append(_alias_reasoning({k: _plain(v) for k, v in message.items() if v is not None}))
    try:
        return template.render(
            messages=chat,
            tools=_plain(tools),
            documents=_plain(documents),
            add_generation_prompt=add_generation_prompt,
            **{name: _plain(value) for name, value in variables.items()},
        )
    except InvalidRequestError:
        raise
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise InvalidRequestError(f"the chat template failed on these messages: {exc}", param="messages") from exc


def _raise_exception(message: str) -> None:
    raise InvalidRequestError(str(message), param="messages")


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # jinja's own tojson escapes HTML characters and takes no options; HF templates expect json.dumps.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _make_dict(*args: Any, **kwargs: Any) -> dict[str, Any]:
    # A plain function rather than the `dict` type, so templates cannot reach the type's attributes.
    return dict(*args, **kwargs)


class _SafeNamespace(jinja2.utils.Namespace):
    """jinja's namespace() without underscore-prefixed attributes (a sandbox escape route)."""

    # No named `self`, like jinja's Namespace, so that `namespace(self=...)` still works.
    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _SafeNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _SafeNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set namespace attribute {name!r}")


class _GenerationTag(Extension):
    """Accept `{% generation %}...{% endgeneration %}` (assistant-mask markers) and render the body as is."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller: Any) -> str:
        return caller()


def _alias_reasoning(message: dict[str, Any]) -> dict[str, Any]:
    # transformers 5 exposes a message's reasoning under both names templates read.
    reasoning = next((message[key] for key in _REASONING_FIELDS if message.get(key) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def _plain(value: Any) -> Any:
    """A copy of `value` built from JSON types only; other objects become an inert "<TypeName>" string."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    # Subclasses of str/int/float (enums, ...) may carry methods: strip them back to the base type.
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return f"<{type(value).__name__}>"
