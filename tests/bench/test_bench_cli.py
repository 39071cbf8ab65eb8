"""`forgellm bench` argument parsing: subcommands, model selection, dataset flags, the serve stand-in."""

from __future__ import annotations

import argparse

import pytest

from forgellm.bench import engine_setup, latency, throughput
from forgellm.cli import bench as bench_cli
from forgellm.cli.main import build_parser, main
from forgellm.errors import ConfigError
from forgellm.models.presets import preset_dir


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["bench", *argv])


def test_latency_flags_and_defaults() -> None:
    args = parse("latency", "--batch-size", "4", "--input-len", "32", "--output-len", "8", "--num-iters", "3")
    assert args.handler is latency.run
    assert (args.batch_size, args.input_len, args.output_len, args.num_iters) == (4, 32, 8, 3)
    assert args.num_iters_warmup == 2 and args.output is None and args.temperature == 1.0
    defaults = parse("latency")
    assert (defaults.batch_size, defaults.input_len, defaults.output_len) == (1, 128, 128)


def test_throughput_flags() -> None:
    args = parse(
        "throughput", "--num-prompts", "7", "--input-len-range", "4:9", "--output-len", "3", "--output", "x.json"
    )
    assert args.handler is throughput.run
    assert (args.num_prompts, args.input_len_range, args.output_len, args.output) == (7, "4:9", 3, "x.json")
    assert args.input_len is None and args.dataset is None


def test_preset_with_random_weights_maps_to_dummy_load() -> None:
    args = parse("latency", "--model-config", "tiny-llama", "--random-weights", "--dtype", "bfloat16", "--seed", "5")
    config = engine_setup.engine_config_from_bench_args(args)
    assert config.model == str(preset_dir("tiny-llama"))
    assert (config.load_format, config.dtype, config.seed) == ("dummy", "bfloat16", 5)
    assert engine_setup.model_label(args, config) == "tiny-llama (random weights)"


def test_model_path_with_random_weights(tmp_path) -> None:
    args = parse("throughput", "--model", str(tmp_path), "--random-weights")
    config = engine_setup.engine_config_from_bench_args(args)
    assert (config.model, config.load_format) == (str(tmp_path), "dummy")
    plain = engine_setup.engine_config_from_bench_args(parse("throughput"))
    assert (plain.model, plain.load_format) == (None, "auto")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model-config", "tiny-llama"], "add --random-weights"),
        (["--model-config", "tiny-llama", "--random-weights", "--model", "/x"], "not both"),
    ],
)
def test_bad_model_selection(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        engine_setup.engine_config_from_bench_args(parse("latency", *argv))


def test_unknown_preset_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("latency", "--model-config", "gpt-9", "--random-weights")
    assert exit_info.value.code == 2
    assert "llama-3.1-8b" in capsys.readouterr().err  # the error lists the presets


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "d.json", "--input-len", "4"], "drop --input-len"),
        (["--dataset", "d.json", "--output-len-range", "1:4"], "drop --output-len-range"),
        (["--input-len", "4", "--input-len-range", "1:4"], "not both"),
        (["--output-len-range", "9:1"], "output-len-range"),
        (["--num-prompts", "0"], "num-prompts"),
    ],
)
def test_bad_throughput_requests_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "throughput", "--disable-tqdm", *argv]) == 2
    assert message in capsys.readouterr().err


def test_bad_latency_values_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "latency", "--num-iters", "0"]) == 2
    assert "--num-iters must be >= 1" in capsys.readouterr().err


def test_bench_without_benchmark_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench"]) == 2
    assert "latency" in capsys.readouterr().err


def test_serve_stand_in_explains_missing_module(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def missing(name: str) -> None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(bench_cli.importlib, "import_module", missing)
    assert main(["bench", "serve", "--url", "http://x", "--help"]) == 2
    assert "not available" in capsys.readouterr().err


def test_serve_uses_the_serve_module(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[argparse.Namespace] = []

    class FakeServe:
        @staticmethod
        def add_arguments(parser: argparse.ArgumentParser) -> None:
            parser.add_argument("--url")

        @staticmethod
        def run(args: argparse.Namespace) -> int:
            calls.append(args)
            return 0

    monkeypatch.setattr(bench_cli.importlib, "import_module", lambda name: FakeServe)
    assert main(["bench", "serve", "--url", "http://x"]) == 0
    assert calls[0].url == "http://x"
