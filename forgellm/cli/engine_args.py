"""Engine flags generated from EngineConfig's fields, plus `--config FILE.yaml`.

Every EngineConfig field `some_option` becomes `--some-option`, typed from its annotation and
documented from its `help` metadata, so adding a field to EngineConfig adds its flag. Precedence:
EngineConfig defaults < the YAML file < flags given on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from forgellm.config import EngineConfig
from forgellm.errors import ConfigError

_SCALARS = (bool, int, float, str)
# Optional fields accept this word on the command line to mean None (e.g. to undo a YAML value).
_NONE_WORD = "none"
# Short placeholders keep `--help` readable; strings show the field name instead.
_METAVARS: dict[type, str] = {int: "N", float: "X", dict: "JSON"}


@dataclasses.dataclass(frozen=True)
class FieldKind:
    """The scalar type of one EngineConfig field, whether it may be None, and its allowed values."""

    scalar: type
    optional: bool
    choices: tuple[Any, ...] | None = None


def field_kind(annotation: Any) -> FieldKind:
    """Reduce an annotation such as `int | None` or `Literal["a", "b"]` to a FieldKind."""
    args = typing.get_args(annotation)
    is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    # A structured option (a dict, or the dataclass it is normalised to) is one JSON object on the command line.
    if any(a is dict or typing.get_origin(a) is dict for a in (args if is_union else (annotation,))):
        return FieldKind(dict, optional=type(None) in args)
    if is_union and type(None) in args:
        rest = tuple(a for a in args if a is not type(None))
        if len(rest) == 1:
            return dataclasses.replace(field_kind(rest[0]), optional=True)
    if typing.get_origin(annotation) is typing.Literal:
        return FieldKind(type(args[0]), optional=False, choices=args)
    if annotation in _SCALARS:
        return FieldKind(annotation, optional=False)
    raise TypeError(f"EngineConfig field type {annotation!r} has no CLI flag mapping; extend engine_args.py")


def engine_field_kinds() -> dict[str, FieldKind]:
    """FieldKind of every EngineConfig field, in declaration order."""
    hints = typing.get_type_hints(EngineConfig)
    return {f.name: field_kind(hints[f.name]) for f in dataclasses.fields(EngineConfig)}


def flag_name(field_name: str) -> str:
    """`max_num_seqs` -> `--max-num-seqs`."""
    return "--" + field_name.replace("_", "-")


def _converter(kind: FieldKind) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        if kind.optional and text.lower() == _NONE_WORD:
            return None
        if kind.scalar is dict:  # parsed by engine_config_from_args, whose ConfigError explains bad JSON
            return text
        return kind.scalar(text)

    # argparse names the type in its "invalid value" message.
    convert.__name__ = kind.scalar.__name__
    return convert


def _parse_json_object(flag: str, text: str) -> dict[str, Any]:
    # A ConfigError, not argparse's generic "invalid value": it says what is wrong with the JSON.
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f'{flag} {text!r} is not valid JSON ({exc}); give a JSON object such as \'{{"method": "ngram"}}\''
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(f'{flag} must be a JSON object such as \'{{"method": "ngram"}}\', got {text!r}')
    return value


def _help_text(field: dataclasses.Field, kind: FieldKind) -> str:
    text = field.metadata.get("help", "")
    if "default" not in text:
        text += f" (default: {field.default})"
    if kind.optional and kind.scalar is not bool:
        text += f"; '{_NONE_WORD}' for unset"
    # argparse applies %-formatting to help strings.
    return text.replace("%", "%%")


def add_engine_args(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """Add `--config` and one flag per EngineConfig field (except `exclude`) to `parser`.

    Flags default to argparse.SUPPRESS, so the namespace only holds options the user set.
    """
    group = parser.add_argument_group("engine options")
    group.add_argument(
        "--config",
        dest="config_file",
        metavar="FILE.yaml",
        default=argparse.SUPPRESS,
        help="YAML file of engine options (EngineConfig field names as keys); flags override it",
    )
    kinds = engine_field_kinds()
    for field in dataclasses.fields(EngineConfig):
        if field.name in exclude:
            continue
        kind = kinds[field.name]
        common = {"dest": field.name, "default": argparse.SUPPRESS, "help": _help_text(field, kind)}
        if kind.scalar is bool:
            group.add_argument(flag_name(field.name), action=argparse.BooleanOptionalAction, **common)
        else:
            group.add_argument(
                flag_name(field.name),
                type=_converter(kind),
                choices=kind.choices,
                metavar=_METAVARS.get(kind.scalar, field.name.upper()),
                **common,
            )


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of engine options, checking key names and value types."""
    try:
        import yaml
    except ImportError:
        raise ConfigError(f"reading --config {path} needs PyYAML; install it with: pip install pyyaml") from None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value, got {type(data).__name__}")

    kinds = engine_field_kinds()
    # Accept the flag spelling (max-num-seqs) as well as the field name (max_num_seqs).
    values = {str(key).replace("-", "_"): value for key, value in data.items()}
    unknown = sorted(set(values) - set(kinds))
    if unknown:
        raise ConfigError(f"config file {path}: unknown engine option(s) {unknown}; known: {sorted(kinds)}")
    return {name: _check_value(path, name, value, kinds[name]) for name, value in values.items()}


def _check_value(path: str | Path, name: str, value: Any, kind: FieldKind) -> Any:
    if value is None and kind.optional:
        return None
    # YAML has no separate int and float for whole numbers; an int is a fine float.
    if kind.scalar is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # bool is an int subclass, so `max_num_seqs: true` must be rejected explicitly.
    if isinstance(value, kind.scalar) and (kind.scalar is bool or not isinstance(value, bool)):
        if kind.choices is None or value in kind.choices:
            return value
    expected = kind.scalar.__name__ + (" or null" if kind.optional else "")
    raise ConfigError(f"config file {path}: {name} must be {expected}, got {value!r}")


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    """Build the EngineConfig: defaults, then the --config file, then the flags the user set."""
    values: dict[str, Any] = {}
    config_file = getattr(args, "config_file", None)
    if config_file is not None:
        values.update(load_config_file(config_file))
    kinds = engine_field_kinds()
    for field in dataclasses.fields(EngineConfig):
        if hasattr(args, field.name):
            value = getattr(args, field.name)
            if kinds[field.name].scalar is dict and isinstance(value, str):
                value = _parse_json_object(flag_name(field.name), value)
            values[field.name] = value
    return EngineConfig.from_dict(values)
