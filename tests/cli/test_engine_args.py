"""Engine flags generated from EngineConfig, and the --config YAML file."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import pytest

from forgellm.cli.engine_args import (
    add_engine_args,
    engine_config_from_args,
    engine_field_kinds,
    field_kind,
    flag_name,
)
from forgellm.config import EngineConfig
from forgellm.errors import ConfigError


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    return parser.parse_args(argv)


def config_of(argv: list[str]) -> EngineConfig:
    return engine_config_from_args(parse(argv))


def write_yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "engine.yaml"
    path.write_text(text)
    return str(path)


def sample_argv(name: str) -> tuple[list[str], object]:
    """A command line setting field `name` to a non-default value, and that value."""
    kind = engine_field_kinds()[name]
    default = next(f.default for f in dataclasses.fields(EngineConfig) if f.name == name)
    if kind.scalar is bool:
        flag = flag_name(name) if not default else "--no-" + flag_name(name)[2:]
        return [flag], not default
    if kind.choices:
        value = next(c for c in kind.choices if c != default)
    elif kind.scalar is dict:  # a JSON object, parsed by engine_config_from_args
        value = '{"method": "ngram"}'
    else:
        value = {int: 7, float: 0.5, str: "some-value"}[kind.scalar]
    return [flag_name(name), str(value)], value


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(EngineConfig)])
def test_every_field_has_a_flag(name: str) -> None:
    argv, value = sample_argv(name)
    assert getattr(parse(argv), name) == value


def test_no_flags_gives_the_defaults() -> None:
    args = parse([])
    assert not any(hasattr(args, f.name) for f in dataclasses.fields(EngineConfig))
    assert engine_config_from_args(args) == EngineConfig()


def test_flags_override_defaults() -> None:
    config = config_of(["--max-num-seqs", "8", "--cpu-kv-cache-gb", "0.25", "--dtype", "float32"])
    assert (config.max_num_seqs, config.cpu_kv_cache_gb, config.dtype) == (8, 0.25, "float32")
    assert config.block_size == EngineConfig().block_size


def test_bool_flags_both_ways() -> None:
    assert config_of(["--no-enable-prefix-caching"]).enable_prefix_caching is False
    assert config_of(["--enable-prefix-caching"]).enable_prefix_caching is True
    assert config_of(["--enforce-eager"]).enforce_eager is True


def test_optional_int_takes_a_number_or_none() -> None:
    assert config_of(["--max-model-len", "512"]).max_model_len == 512
    assert config_of(["--max-model-len", "none"]).max_model_len is None


def test_bad_number_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(["--max-num-seqs", "many"])
    assert exc.value.code == 2
    assert "--max-num-seqs" in capsys.readouterr().err


def test_invalid_value_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="max_num_seqs"):
        config_of(["--max-num-seqs", "0"])


def test_exclude_leaves_a_field_out() -> None:
    parser = argparse.ArgumentParser()
    add_engine_args(parser, exclude=("seed",))
    with pytest.raises(SystemExit):
        parser.parse_args(["--seed", "3"])


def test_yaml_values_apply(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "max_num_seqs: 8\nenable_prefix_caching: false\ngpu_memory_utilization: 1\n")
    config = config_of(["--config", path])
    assert config.max_num_seqs == 8
    assert config.enable_prefix_caching is False
    assert config.gpu_memory_utilization == 1.0


def test_flags_override_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "max_num_seqs: 8\nblock_size: 32\nmax_model_len: 1024\n")
    config = config_of(["--config", path, "--block-size", "64", "--max-model-len", "none"])
    assert (config.max_num_seqs, config.block_size, config.max_model_len) == (8, 64, None)


def test_yaml_accepts_flag_spelling(tmp_path: Path) -> None:
    assert config_of(["--config", write_yaml(tmp_path, "max-num-seqs: 3\n")]).max_num_seqs == 3


def test_empty_yaml_is_the_defaults(tmp_path: Path) -> None:
    assert config_of(["--config", write_yaml(tmp_path, "")]) == EngineConfig()


def test_unknown_yaml_key_is_named(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "max_num_seqs: 8\nmax_num_sequences: 9\n")
    with pytest.raises(ConfigError, match="max_num_sequences") as exc:
        config_of(["--config", path])
    assert path in str(exc.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("max_num_seqs: lots\n", "max_num_seqs must be int"),
        ("max_num_seqs: true\n", "max_num_seqs must be int"),
        ("enforce_eager: 1\n", "enforce_eager must be bool"),
        ("block_size: null\n", "block_size must be int"),
        ("- a\n- b\n", "mapping"),
        ("max_num_seqs: [\n", "not valid YAML"),
    ],
)
def test_bad_yaml_content(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        config_of(["--config", write_yaml(tmp_path, text)])


def test_yaml_null_for_optional_field(tmp_path: Path) -> None:
    assert config_of(["--config", write_yaml(tmp_path, "num_kv_blocks: null\n")]).num_kv_blocks is None


def test_missing_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        config_of(["--config", str(tmp_path / "absent.yaml")])


def test_missing_pyyaml_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # makes `import yaml` raise ImportError
    with pytest.raises(ConfigError, match="PyYAML"):
        config_of(["--config", write_yaml(tmp_path, "max_num_seqs: 8\n")])


def test_field_kind_of_annotations() -> None:
    from typing import Literal

    assert field_kind(int | None).optional
    assert field_kind(int | None).scalar is int
    assert field_kind(Literal["a", "b"]).choices == ("a", "b")
    with pytest.raises(TypeError, match="no CLI flag"):
        field_kind(list[int])
