"""Latency and throughput benchmarks end to end on the tiny random-weight preset, on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forgellm.bench import engine_setup
from forgellm.bench.datasets import random_requests
from forgellm.bench.latency import BatchTiming, measure_latency, summarize_batches
from forgellm.bench.throughput import measure_throughput
from forgellm.cli.main import main
from forgellm.config import EngineConfig
from forgellm.errors import ConfigError
from forgellm.models.presets import preset_dir

TINY = ["--model-config", "tiny-llama", "--random-weights", "--device", "cpu", "--disable-tqdm"]


@pytest.fixture(scope="module")
def engine():
    config = EngineConfig(model=str(preset_dir("tiny-llama")), load_format="dummy", device="cpu", max_num_seqs=8)
    return engine_setup.build_engine(config)


def test_summarize_batches_exact() -> None:
    batches = [
        BatchTiming(start=10.0, token_times=[[10.5, 10.6, 10.8], [10.5, 10.7, 11.0]]),
        BatchTiming(start=20.0, token_times=[[20.2, 20.3, 20.4], [20.3, 20.4, 20.5]]),
    ]
    result = summarize_batches(batches, batch_size=2, input_len=4, output_len=3)
    assert result.num_iters == 2
    assert result.ttft_s.mean == pytest.approx((0.5 + 0.5 + 0.2 + 0.3) / 4)
    assert result.itl_s.count == 8 and result.itl_s.max == pytest.approx(0.3)
    assert result.e2e_s.mean == pytest.approx((1.0 + 0.5) / 2)
    assert result.output_tok_s == pytest.approx(2 * 3 / 0.75)
    assert result.decode_tok_s == pytest.approx(2 / result.itl_s.mean)
    assert result.itl_p99_over_p50 == pytest.approx(result.itl_s.p99 / result.itl_s.p50)


def test_measure_latency_counts_every_token(engine) -> None:
    result = measure_latency(engine, 3, 6, 4, num_iters=2, num_warmup=1, disable_tqdm=True)
    assert result.ttft_s.count == 3 * 2
    assert result.itl_s.count == 3 * 2 * (4 - 1)
    assert result.e2e_s.count == 2
    assert 0 < result.ttft_s.mean < result.e2e_s.mean
    assert not engine.has_unfinished_requests()


def test_measure_latency_rejects_batches_that_cannot_run_together(engine) -> None:
    with pytest.raises(ConfigError, match="max_num_seqs"):
        measure_latency(engine, 9, 4, 2, num_iters=1, disable_tqdm=True)


def test_measure_throughput_and_time_limit(engine) -> None:
    requests = random_requests(10, (3, 9), (2, 5), vocab_size=4096, seed=1)
    result = measure_throughput(engine, requests, disable_tqdm=True)
    assert result.complete and result.num_finished == 10
    assert result.output_tokens == sum(r.output_len for r in requests)
    assert result.prompt_tokens == sum(len(r.prompt_token_ids) for r in requests)
    assert result.total_tok_s > result.output_tok_s > 0

    cut = measure_throughput(engine, random_requests(10, 8, 50, vocab_size=4096, seed=2), time_limit_s=0.0)
    assert not cut.complete and cut.num_finished < 10
    assert not engine.has_unfinished_requests()  # the rest were aborted


def test_latency_cli_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "latency.json"
    argv = ["bench", "latency", *TINY, "--batch-size", "2", "--input-len", "8", "--output-len", "5"]
    assert main([*argv, "--num-iters", "2", "--num-iters-warmup", "1", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    for expected in ("tiny-llama (random weights)", "cpu", "float32", "TTFT (ms)", "per-token p99/p50"):
        assert expected in text
    data = json.loads(out.read_text())
    assert data["benchmark"] == "latency" and data["ttft_ms"]["count"] == 4 and data["itl_ms"]["count"] == 16
    assert data["engine_config"]["load_format"] == "dummy"


def test_throughput_cli_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "throughput.json"
    argv = ["bench", "throughput", *TINY, "--num-prompts", "6", "--input-len-range", "4:12", "--output-len", "3"]
    assert main([*argv, "--output", str(out)]) == 0
    assert "output tokens/s" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert (data["num_finished"], data["output_tokens"], data["complete"]) == (6, 18, True)


def test_throughput_cli_on_sharegpt(tmp_path: Path) -> None:
    words = "the quick brown fox jumps over the lazy dog and keeps on running far away"
    entries = [
        {"conversations": [{"from": "human", "value": f"{words} {i}"}, {"from": "gpt", "value": words}]}
        for i in range(5)
    ]
    dataset = tmp_path / "sharegpt.json"
    dataset.write_text(json.dumps(entries))
    out = tmp_path / "throughput.json"
    argv = ["bench", "throughput", *TINY, "--dataset", str(dataset), "--num-prompts", "4", "--output", str(out)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert data["num_finished"] == 4 and data["output_tokens"] > 4 * 4
