"""Forced acceptance and `forgellm bench latency --spec-acceptance`: acceptance as asked for, real costs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from forgellm.bench import engine_setup
from forgellm.bench.latency import measure_latency
from forgellm.cli.main import main
from forgellm.config import EngineConfig
from forgellm.engine.request import Request
from forgellm.errors import ConfigError
from forgellm.models.presets import preset_dir
from forgellm.sampling_params import SamplingParams
from forgellm.spec_decode.forced_acceptance import ForcedAcceptance

TINY = str(preset_dir("tiny-llama"))
SELF_DRAFT = {"method": "draft_model", "model": TINY, "num_speculative_tokens": 3}


def test_accepts_each_position_with_the_given_probability():
    force = ForcedAcceptance(0.7, seed=1)
    vocab, k, batch = 11, 4, 500
    logits = torch.randn(batch * (k + 1), vocab, generator=torch.Generator().manual_seed(0))
    logits[:, 3:7] = -10.0  # the target never agrees with a draft: only forcing accepts one
    drafts = [[3, 4, 5, 6] for _ in range(batch)]
    requests = [Request(f"r{i}", [1], SamplingParams(temperature=0.0), 10) for i in range(batch)]
    tokens = force(logits, requests, drafts, [None] * batch, None).token_ids.tolist()
    accepted = [next((i for i, (t, d) in enumerate(zip(row, [3, 4, 5, 6])) if t != d), k) for row in tokens]
    assert abs(sum(a >= 1 for a in accepted) / batch - 0.7) < 0.09  # position 1: 4.4 sigma
    assert abs(sum(a >= 2 for a in accepted) / batch - 0.49) < 0.1
    choices = logits.view(batch, k + 1, vocab).argmax(-1)
    for b, (row, a) in enumerate(zip(tokens, accepted)):
        assert row[a] == choices[b, a]  # after the accepted drafts: the target's argmax there
        assert row[a + 1 :] == [-1] * (k - a)


def test_acceptance_outside_0_1_is_refused():
    with pytest.raises(ConfigError, match=r"in \[0, 1\]"):
        ForcedAcceptance(1.5)


@pytest.fixture(scope="module")
def spec_engine():
    config = EngineConfig(model=TINY, load_format="dummy", device="cpu", max_num_seqs=4, speculative_config=SELF_DRAFT)
    return engine_setup.build_engine(config)


@pytest.mark.parametrize(("acceptance", "rate"), [(1.0, 1.0), (0.0, 0.0)])
def test_measured_acceptance_is_the_replayed_one(spec_engine, acceptance: float, rate: float):
    result = measure_latency(
        spec_engine,
        2,
        6,
        20,
        num_iters=2,
        num_warmup=1,
        temperature=0.0,
        disable_tqdm=True,
        forced_acceptance=acceptance,
    )
    spec = result.speculation
    assert spec["verify_steps"] > 0 and spec["acceptance_rate"] == rate
    assert spec["accepted_per_position"][0] == rate
    assert spec["tokens_per_verify_step"] == pytest.approx(1 + rate * 3, abs=0.5 if rate else 0)
    assert result.itl_s.count == 2 * 2 * 19  # every token arrived, replayed or not


def test_latency_cli_reports_speculation(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "latency.json"
    argv = ["bench", "latency", "--model-config", "tiny-llama", "--random-weights", "--device", "cpu"]
    argv += ["--disable-tqdm", "--batch-size", "1", "--input-len", "6", "--output-len", "12", "--num-iters", "1"]
    argv += ["--temperature", "0.8", "--speculative-config", json.dumps(SELF_DRAFT), "--spec-acceptance", "1"]
    assert main([*argv, "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "forced acceptance 1.0" in text and "tokens per verify step" in text
    data = json.loads(out.read_text())
    assert data["speculation"]["acceptance_rate"] == 1.0 and data["spec_forced_acceptance"] == 1.0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--spec-acceptance", "0.8"], "needs --speculative-config"),
        (["--spec-acceptance", "1.2", "--speculative-config", json.dumps(SELF_DRAFT)], "must be in [0, 1]"),
    ],
)
def test_latency_cli_refuses_forced_acceptance_without_what_it_needs(extra, message, capsys):  # noqa: ANN001
    argv = ["bench", "latency", "--model-config", "tiny-llama", "--random-weights", "--device", "cpu"]
    argv += ["--disable-tqdm", "--num-iters", "1", "--output-len", "4", *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_latency_cli_with_a_random_eagle3_head(capsys: pytest.CaptureFixture[str]):
    """What the 8B benchmark runs (an EAGLE-3 head preset with random weights, forced acceptance), at tiny size."""
    head = preset_dir("tiny-llama").parent / "heads" / "tiny-llama-eagle3"
    spec = {"method": "eagle3", "model": str(head), "num_speculative_tokens": 4}
    argv = ["bench", "latency", "--model-config", "tiny-llama", "--random-weights", "--device", "cpu"]
    argv += ["--disable-tqdm", "--batch-size", "2", "--input-len", "6", "--output-len", "16", "--num-iters", "1"]
    argv += ["--temperature", "0", "--speculative-config", json.dumps(spec), "--spec-acceptance", "1"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:2] == ["speculation", "eagle3"] for line in lines if line.strip())
    assert [line.split()[-1] for line in lines if line.startswith("draft acceptance rate")] == ["1.000"]
