"""Where a request's output constraint comes from: OpenAI's response_format, vLLM's guided_* fields or its
structured_outputs object; errors about it name the field it came in."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from forgellm.errors import InvalidRequestError


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
