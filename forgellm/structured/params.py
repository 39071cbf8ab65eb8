"""StructuredOutputsParams: one constraint on a request's output, named as vLLM's users know it."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

from forgellm.errors import InvalidRequestError

_FIELD = "structured_outputs"
CONSTRAINTS = ("json", "json_object", "regex", "choice", "grammar", "structural_tag")


@dataclass(frozen=True)
class StructuredOutputsParams:
    """Exactly one of: `json` (a JSON schema, as a dict or its text), `json_object` (any JSON object),
    `regex`, `choice` (one of these strings), `grammar` (EBNF / GBNF) or `structural_tag` (xgrammar's
    structural-tag JSON)."""

    json: dict[str, Any] | str | None = None
    json_object: bool | None = None
    regex: str | None = None
    choice: tuple[str, ...] | list[str] | None = None
    grammar: str | None = None
    structural_tag: dict[str, Any] | str | None = None
    # JSON only: no whitespace between tokens at all (compact output), as vLLM's option of that name.
    disable_any_whitespace: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.disable_any_whitespace, bool):
            raise InvalidRequestError(
                f"{_FIELD}.disable_any_whitespace must be true or false, got {self.disable_any_whitespace!r}",
                f"{_FIELD}.disable_any_whitespace",
            )
        given = [name for name in CONSTRAINTS if getattr(self, name) not in (None, False)]
        if len(given) != 1:
            raise InvalidRequestError(
                f"{_FIELD} takes exactly one constraint of json, json_object, regex, choice, grammar or "
                f"structural_tag; got {given or 'none'}",
                _FIELD,
            )
        kind = given[0]
        value = getattr(self, kind)
        if kind == "json_object" and value is not True:
            raise InvalidRequestError(f"{_FIELD}.json_object must be true, got {value!r}", f"{_FIELD}.json_object")
        if kind in ("json", "structural_tag") and not isinstance(value, (dict, str)):
            raise InvalidRequestError(
                f"{_FIELD}.{kind} must be a JSON object or its text, got {type(value).__name__}", f"{_FIELD}.{kind}"
            )
        if kind in ("regex", "grammar") and (not isinstance(value, str) or not value):
            raise InvalidRequestError(f"{_FIELD}.{kind} must be a non-empty string", f"{_FIELD}.{kind}")
        if kind == "choice":
            if not isinstance(value, (list, tuple)) or not value or any(not isinstance(c, str) or not c for c in value):
                raise InvalidRequestError(
                    f"{_FIELD}.choice must be a non-empty list of non-empty strings", f"{_FIELD}.choice"
                )
            object.__setattr__(self, "choice", tuple(value))

    @property
    def kind(self) -> str:
        """The constraint given: json, json_object, regex, choice, grammar or structural_tag."""
        return next(name for name in CONSTRAINTS if getattr(self, name) not in (None, False))

    @property
    def key(self) -> tuple[str, str]:
        """A hashable key of the constraint (the compile cache's)."""
        value = getattr(self, self.kind)
        if isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        elif isinstance(value, tuple):
            value = json.dumps(list(value))
        return self.kind, str(value)

    @classmethod
    def from_value(cls, value: StructuredOutputsParams | dict[str, Any] | None) -> StructuredOutputsParams | None:
        """Accept the dataclass or its dict (vLLM's guided_decoding dicts use the same keys)."""
        if value is None or isinstance(value, StructuredOutputsParams):
            return value
        if not isinstance(value, dict):
            raise InvalidRequestError(
                f"{_FIELD} must be a StructuredOutputsParams or a dict, got {type(value).__name__}", _FIELD
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise InvalidRequestError(f"unknown {_FIELD} key(s) {unknown}; known: {sorted(known)}", _FIELD)
        return cls(**value)
