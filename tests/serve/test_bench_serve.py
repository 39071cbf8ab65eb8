"""`forgellm bench serve` against a live server: every request succeeds and the report adds up."""

from __future__ import annotations

import json

from forgellm.cli.main import main


def test_bench_serve_fixed_concurrency(demo_server, tmp_path, capsys):
    out = tmp_path / "serve.json"
    options = "--num-prompts 6 --input-len 8:24 --output-len 5 --max-concurrency 3 --num-warmups 1"
    args = ["bench", "serve", "--base-url", demo_server.base_url, *options.split(), "--output", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["completed"] == 6 and result["failed"] == 0
    assert result["output_tokens"] == 30  # ignore_eos: exactly the asked length
    assert result["output_tok_s"] > 0 and result["ttft_ms"]["p50"] > 0 and result["itl_ms"]["count"] > 0
    table = capsys.readouterr().out
    assert "TTFT (ms)" in table and "output tokens/s" in table
    assert demo_server.wait_until(demo_server.is_idle)


def test_bench_serve_poisson_chat_and_sharegpt(demo_server, tmp_path, capsys):
    data = [
        {
            "conversations": [
                {"from": "human", "value": f"Write {i} lines of Python."},
                {"from": "gpt", "value": "print(1)\n" * (i + 2)},
            ]
        }
        for i in range(4)
    ]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(data))
    options = f"--endpoint chat --dataset sharegpt --dataset-path {path} --num-prompts 4 --request-rate 50"
    args = [
        "bench",
        "serve",
        "--base-url",
        demo_server.base_url,
        *options.split(),
        "--output",
        str(tmp_path / "o.json"),
    ]
    assert main(args) == 0
    result = json.loads((tmp_path / "o.json").read_text())
    assert result["completed"] == 4 and result["failed"] == 0


def test_bench_serve_reports_failures(demo_server, tmp_path, capsys):
    options = "--model no-such-model --num-prompts 2 --input-len 4 --output-len 2"
    args = [
        "bench",
        "serve",
        "--base-url",
        demo_server.base_url,
        *options.split(),
        "--output",
        str(tmp_path / "f.json"),
    ]
    assert main(args) == 1  # every request failed
    result = json.loads((tmp_path / "f.json").read_text())
    assert result["failed"] == 2 and "404" in result["errors"][0]
