"""The `forgellm` command: in-process with a fake engine, and as a subprocess with the real one."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

import forgellm
from forgellm.cli.main import main
from forgellm.cli.streaming import stream_to
from forgellm.config import EngineConfig
from forgellm.errors import ContextLengthError
from forgellm.outputs import CompletionOutput, RequestOutput
from forgellm.sampling_params import SamplingParams

REPO = Path(__file__).resolve().parents[2]
PIECES = ["Hel", "lo", "", " world"]


class FakeTokenizer:
    """Renders messages as `<role>content` and encodes one id per character."""

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        assert add_special_tokens is False
        return [ord(c) for c in text]


@pytest.fixture
def fake_llm(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """Replace forgellm.LLM with an engine that streams PIECES; returns what it was called with."""
    record = SimpleNamespace(configs=[], prompts=[], params=[])

    class FakeLLM:
        def __init__(self, config: EngineConfig | None) -> None:
            record.configs.append(config)

        def get_tokenizer(self) -> FakeTokenizer:
            return FakeTokenizer()

        def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
            tokenizer = FakeTokenizer()
            return tokenizer.encode(tokenizer.apply_chat_template(messages, True), add_special_tokens=False)

        def stream(self, prompt: str | list[int], params: SamplingParams) -> Iterator[RequestOutput]:
            text = prompt if isinstance(prompt, str) else "".join(map(chr, prompt))
            if "too long" in text:
                raise ContextLengthError("prompt is too long for this model")
            record.prompts.append(text)
            record.params.append(params)
            cumulative, ids = "", []
            for i, piece in enumerate(PIECES):
                cumulative += piece
                ids.append(100 + i)
                done = i == len(PIECES) - 1
                completion = CompletionOutput(0, cumulative, list(ids), finish_reason="length" if done else None)
                yield RequestOutput("r0", None, [], [completion], finished=done)

    monkeypatch.setattr(forgellm, "LLM", FakeLLM, raising=False)
    return record


class TerminalInput(io.StringIO):
    def isatty(self) -> bool:
        return True


class RecordingOutput(io.StringIO):
    """Notes the buffer's contents at every flush."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


# --- in-process, fake engine ----------------------------------------------------------------------


def test_stream_to_writes_and_flushes_each_delta(fake_llm: SimpleNamespace) -> None:
    out = RecordingOutput()
    result = stream_to(forgellm.LLM(None), "p", SamplingParams(), out)
    assert out.getvalue() == "Hello world"
    assert out.flushed == ["Hel", "Hello", "Hello world"]
    assert (result.text, result.num_tokens, result.finish_reason) == ("Hello world", 4, "length")
    assert "4 tokens" in result.summary() and "tokens/s" in result.summary()


def test_generate_streams_and_summarises(fake_llm: SimpleNamespace, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["generate", "def f", "--max-tokens", "8", "--temperature", "0", "--stop", "\n", "--seed", "5"]
    assert main(argv + ["--max-num-seqs", "4"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "Hello world\n"
    assert "4 tokens" in captured.err and "tokens/s" in captured.err
    assert fake_llm.prompts == ["def f"]
    params = fake_llm.params[0]
    assert (params.max_tokens, params.temperature, params.stop, params.seed) == (8, 0.0, ["\n"], 5)
    assert fake_llm.configs[0].max_num_seqs == 4 and fake_llm.configs[0].seed == 5


def test_generate_reads_piped_stdin(
    fake_llm: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("import os\n"))
    assert main(["generate"]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("from stdin"))
    assert main(["generate", "-"]) == 0
    assert fake_llm.prompts == ["import os", "from stdin"]


def test_generate_without_prompt_on_a_terminal(
    fake_llm: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", TerminalInput())
    assert main(["generate"]) == 2
    assert capsys.readouterr().err.startswith("error: no prompt")
    assert fake_llm.configs == []


def test_generate_engine_error_exits_2(fake_llm: SimpleNamespace, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "too long"]) == 2
    assert capsys.readouterr().err == "error: prompt is too long for this model\n"


def test_generate_bad_config_exits_2_before_loading(
    fake_llm: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", "x", "--block-size", "0"]) == 2
    assert "block_size" in capsys.readouterr().err
    assert fake_llm.configs == []


def test_chat_keeps_history_and_resets(
    fake_llm: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = "hi\n\nagain\n/reset\nfresh\n/help\n/exit\nnever read\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    assert main(["chat", "--system", "be brief", "--temperature", "0.5"]) == 0
    assert fake_llm.prompts == [
        "<system>be brief<user>hi<assistant>",
        "<system>be brief<user>hi<assistant>Hello world<user>again<assistant>",
        "<system>be brief<user>fresh<assistant>",
    ]
    assert fake_llm.params[0].temperature == 0.5
    captured = capsys.readouterr()
    assert captured.out.count("Hello world\n") == 3
    assert ">>> " in captured.out
    assert "conversation cleared" in captured.err and "unknown command /help" in captured.err


def test_chat_continues_after_an_error(
    fake_llm: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("too long\nshort\n"))  # ends with EOF, no /exit
    assert main(["chat"]) == 0
    # The failed turn is not kept in the history.
    assert fake_llm.prompts == ["<user>short<assistant>"]
    err = capsys.readouterr().err
    assert "error: prompt is too long for this model (/reset" in err
    assert "Traceback" not in err


def test_stop_and_system_take_backslash_escapes(
    fake_llm: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # What a shell passes for `--stop "\n\n" --stop "a\\nb"`: backslashes, not newlines.
    assert main(["generate", r"x\n", "--stop", r"\n\n", "--stop", r"a\\nb"]) == 0
    assert fake_llm.params[0].stop == ["\n\n", r"a\nb"]
    assert fake_llm.prompts == [r"x\n"]  # the prompt is taken as typed
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n"))
    assert main(["chat", "--system", r"be brief.\tNo lists.", "--stop", r"\u2028"]) == 0
    assert fake_llm.prompts[1] == "<system>be brief.\tNo lists.<user>hi<assistant>"
    assert fake_llm.params[1].stop == ["\u2028"]


def test_bad_escape_is_a_usage_error(fake_llm: SimpleNamespace, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "x", "--stop", r"\u12"])
    assert exit_info.value.code == 2
    assert "--stop" in capsys.readouterr().err
    assert fake_llm.configs == []


def test_chat_bad_sampling_exits_2(fake_llm: SimpleNamespace, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "--top-p", "0"]) == 2
    assert "error: top_p" in capsys.readouterr().err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "generate" in capsys.readouterr().err


# --- subprocess ------------------------------------------------------------------------------------


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "forgellm", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )


def test_version() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("forgellm ")


def test_building_the_parser_imports_no_heavy_package() -> None:
    """`forgellm --help` (any subcommand's) must not wait for torch, transformers or the server stack."""
    heavy = ("torch", "transformers", "fastapi", "uvicorn", "triton")
    code = (
        "import sys, forgellm.cli.main as m; m.build_parser(); import forgellm; forgellm.__version__; "
        f"loaded = [name for name in {heavy!r} if name in sys.modules]; "
        "assert not loaded, loaded"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_public_names_load_on_first_use() -> None:
    from forgellm import LLM, SamplingParams

    assert LLM.__module__ == "forgellm.llm" and SamplingParams.__module__ == "forgellm.sampling_params"
    assert all(getattr(forgellm, name) is not None for name in forgellm.__all__)
    assert set(forgellm.__all__) <= set(dir(forgellm))
    with pytest.raises(AttributeError, match="no_such_name"):
        forgellm.no_such_name  # noqa: B018


def test_bad_temperature_is_a_clean_error() -> None:
    proc = run_cli("generate", "def f", "--temperature", "-1")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "temperature" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_yaml_key_is_a_clean_error(tmp_path: Path) -> None:
    config = tmp_path / "engine.yaml"
    config.write_text("max_num_seq: 4\n")
    proc = run_cli("generate", "def f", "--config", str(config))
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "max_num_seq" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_generate_with_the_demo_model() -> None:
    proc = run_cli("generate", "def f", "--max-tokens", "8", "--temperature", "0", "--ignore-eos")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("\n") and len(proc.stdout) > 1
    assert "8 tokens" in proc.stderr


def test_generate_stops_at_an_escaped_newline_stop_string() -> None:
    # The demo's greedy completion of this prompt reaches a blank line within a few tokens
    # ('\n    """\n    Computes the nth degree of a graph.\n\n'); without unescaping, the stop
    # string would be a backslash and an n, which never occurs, and it would run to --max-tokens.
    argv = ("generate", "def fibonacci(n):", "--max-tokens", "64", "--temperature", "0", "--dtype", "float32")
    proc = run_cli(*argv, "--stop", r"\n\n")
    assert proc.returncode == 0, proc.stderr
    assert "finish: stop" in proc.stderr
    text = proc.stdout.removesuffix("\n")  # generate ends its output with one newline
    assert "\n\n" not in text and "Computes" in text
    assert "64 tokens" not in proc.stderr


def test_generate_is_reproducible_with_a_seed() -> None:
    argv = ("generate", "import", "--max-tokens", "8", "--seed", "3", "--ignore-eos")
    assert run_cli(*argv).stdout == run_cli(*argv).stdout


def test_chat_with_the_demo_model() -> None:
    proc = run_cli("chat", "--max-tokens", "8", "--ignore-eos", stdin="hello\n/exit\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(">>> ") and len(proc.stdout) > len(">>> \n>>> ")
    assert "Traceback" not in proc.stderr


# --- images, the tiny Qwen2-VL checkpoint ------------------------------------------------------------


def test_generate_and_chat_show_images_to_a_vision_language_model(tmp_path, monkeypatch, capsys) -> None:
    """`--image PATH` puts the image first in the (first) user message; the answer is LLM.chat's."""
    import numpy as np
    from PIL import Image

    from forgellm import LLM
    from tests.fixtures.make_tiny_vlm import make

    checkpoint = make(tmp_path, "qwen2_vl")
    image = tmp_path / "picture.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(image)
    engine = ["--model", str(checkpoint), "--dtype", "float32", "--block-size", "4"]
    sampling = ["--temperature", "0", "--max-tokens", "5", "--ignore-eos"]
    messages = [
        {"role": "user", "content": [{"type": "image", "image": str(image)}, {"type": "text", "text": "What?"}]}
    ]
    greedy = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
    expected = LLM(str(checkpoint), dtype="float32", block_size=4).chat(messages, greedy, use_tqdm=False)
    expected_text = expected[0].outputs[0].text
    assert main(["generate", "What?", "--image", str(image), *engine, *sampling]) == 0
    assert capsys.readouterr().out == expected_text + "\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO("What?\n/exit\n"))
    assert main(["chat", "--image", str(image), *engine, *sampling]) == 0
    assert expected_text in capsys.readouterr().out
    assert main(["generate", "What?", "--image", str(tmp_path / "missing.png"), *engine, *sampling]) == 2
    assert "no image file" in capsys.readouterr().err
