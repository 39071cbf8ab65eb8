"""Where a request's output constraint comes from: OpenAI's response_format, vLLM's guided_* fields or its
structured_outputs object; errors about it name the field it came in."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from forgellm.errors import InvalidRequestError
from forgellm.structured.backend import MAX_JSON_WHITESPACE


@contextlib.contextmanager
def naming_constraint_errors(field: str) -> Iterator[None]:
    """Re-raise an error about `structured_outputs` (its checks, its compiler) as one naming `field`, the
    request field the constraint came from (response_format, guided_json, ...)."""
    try:
        yield
    except InvalidRequestError as exc:
        param = exc.param or ""
        if field == "structured_outputs" or not param.startswith("structured_outputs"):
            raise
        message = str(exc).replace(param, field, 1) if param in str(exc) else str(exc)
        raise InvalidRequestError(message, field) from exc


def response_format_constraint(
    response_format: dict[str, Any], field: str = "response_format"
) -> dict[str, Any] | None:
    """OpenAI's response_format (or a Responses text.format, `field`) as a constraint: text (none),
    json_object, or json_schema with its schema."""
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequestError(f"{field} json_schema needs json_schema.schema, a JSON schema object", field)
        return {"json": schema}
    raise InvalidRequestError(f"{field} type must be text, json_object or json_schema, got {kind!r}", field)


def after_reasoning(constraint: dict[str, Any], start: str, end: str, opened_by_prompt: bool) -> dict[str, Any]:
    """The constraint of a reasoning model's answer: free text inside `start`...`end` first (optional, unless
    the prompt already opened it), then the constrained answer, as one xgrammar structural tag (so the
    model still thinks before it writes the JSON, the call or the choice)."""
    think: dict[str, Any] = {"type": "tag", "begin": "" if opened_by_prompt else start,
                             "content": {"type": "any_text"}, "end": end}  # fmt: skip
    if not opened_by_prompt:
        think = {"type": "optional", "content": think}
    answer = _as_format(constraint)
    return {"structural_tag": {"type": "structural_tag", "format": {"type": "sequence", "elements": [think, answer]}}}


def _as_format(constraint: dict[str, Any]) -> dict[str, Any]:
    """A StructuredOutputsParams dict as an xgrammar structural-tag format."""
    if constraint.get("structural_tag") is not None:
        tag = constraint["structural_tag"]
        tag = json.loads(tag) if isinstance(tag, str) else tag
        return tag.get("format", tag)
    if constraint.get("json") is not None or constraint.get("json_object"):
        schema = constraint.get("json") or {"type": "object"}
        schema = json.loads(schema) if isinstance(schema, str) else schema
        return {"type": "json_schema", "json_schema": schema, "max_whitespace_cnt": MAX_JSON_WHITESPACE}
    if constraint.get("regex") is not None:
        return {"type": "regex", "pattern": constraint["regex"]}
    if constraint.get("grammar") is not None:
        return {"type": "grammar", "grammar": constraint["grammar"]}
    return {"type": "or", "elements": [{"type": "const_string", "value": c} for c in constraint["choice"]]}
