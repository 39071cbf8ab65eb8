"""`forgellm serve` argument handling (the running server is covered by test_shutdown.py)."""

from __future__ import annotations

import pytest

from forgellm.cli.main import build_parser, main


def test_help_lists_server_and_engine_flags(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--served-model-name", "--api-key", "--max-waiting-requests", "--shutdown-timeout", "--max-num-seqs"):
        assert flag in text


def test_api_key_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("FORGELLM_API_KEY", "from-env")
    assert build_parser().parse_args(["serve"]).api_key == "from-env"
    assert build_parser().parse_args(["serve", "--api-key", "flag"]).api_key == "flag"


def test_model_given_twice_is_an_error(capsys):
    assert main(["serve", "a/model", "--model", "another/model"]) == 2
    assert "once" in capsys.readouterr().err


def test_missing_model_directory_is_a_clean_error(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_taken_port_fails_at_once_before_the_engine_loads(capsys, monkeypatch):
    """The port is bound before the engine loads: a taken one is reported in a moment, naming the address, and
    no engine is built (while it loaded, the ranks' own sockets could take a port only picked, not bound)."""
    import socket

    from forgellm.engine import process_engine

    built = []
    monkeypatch.setattr(process_engine, "ProcessAsyncLLM", lambda **kwargs: built.append(kwargs))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--host", "127.0.0.1", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err and not built
