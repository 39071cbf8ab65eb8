"""The replay proposer and `forgellm bench latency --spec-replay-acceptance`: acceptance as asked for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forgellm.bench import engine_setup
from forgellm.bench.latency import measure_latency
from forgellm.cli.main import main
from forgellm.config import EngineConfig
from forgellm.engine.request import Request
from forgellm.errors import ConfigError
from forgellm.models.presets import preset_dir
from forgellm.sampling_params import SamplingParams
from forgellm.spec_decode.replay import ReplayProposer

TINY = str(preset_dir("tiny-llama"))
SELF_DRAFT = {"method": "draft_model", "model": TINY, "num_speculative_tokens": 3}


class CountingProposer:
    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def propose_for(self, requests, ks):  # noqa: ANN001, ANN201
        self.calls.append(list(ks))
        return [[] for _ in requests]


def request_with_outputs(prompt: list[int], outputs: list[int]) -> Request:
    request = Request("r", prompt, SamplingParams(max_tokens=100), 100)
    for token in outputs:
        request.append_token(token)
    return request


def test_replays_the_recorded_continuation_from_where_the_request_is():
    inner = CountingProposer()
    replay = ReplayProposer(inner, acceptance=1.0, vocab_size=50)
    replay.record([1, 2], [10, 11, 12, 13, 14])
    known, unknown = request_with_outputs([1, 2], [10, 11]), request_with_outputs([3], [])
    replayed, recording = replay.propose_for([known, unknown], [2, 3])
    assert replayed == [12, 13]
    # Being recorded: k random tokens, so the recording run verifies k + 1 positions as the measured one will.
    assert len(recording) == 3 and all(0 <= t < 50 for t in recording)
    assert inner.calls == [[2, 3]]  # the real proposer always runs


def test_every_token_survives_with_probability_acceptance():
    replay = ReplayProposer(CountingProposer(), acceptance=0.7, vocab_size=50, seed=1)
    continuation = list(range(40)) * 100
    replay.record([1], continuation)
    request = request_with_outputs([1], [])
    drafts = replay.propose_for([request], [4000])[0]
    intact = sum(d == c for d, c in zip(drafts, continuation))
    assert len(drafts) == 4000 and abs(intact / 4000 - 0.7) < 0.03  # 4 sigma is 0.029
    assert all(0 <= d < 50 for d in drafts)


def test_acceptance_outside_0_1_is_refused():
    with pytest.raises(ConfigError, match=r"in \[0, 1\]"):
        ReplayProposer(CountingProposer(), acceptance=1.5, vocab_size=50)


@pytest.fixture(scope="module")
def spec_engine():
    config = EngineConfig(
        model=TINY, load_format="dummy", device="cpu", max_num_seqs=4, speculative_config=SELF_DRAFT
    )
    return engine_setup.build_engine(config)


@pytest.mark.parametrize(("acceptance", "rate"), [(1.0, 1.0), (0.0, 0.0)])
def test_measured_acceptance_is_the_replayed_one(spec_engine, acceptance: float, rate: float):
    result = measure_latency(
        spec_engine, 2, 6, 20, num_iters=2, num_warmup=1, temperature=0.0, disable_tqdm=True,
        replay_acceptance=acceptance,
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
    argv += ["--temperature", "0", "--speculative-config", json.dumps(SELF_DRAFT), "--spec-replay-acceptance", "1"]
    assert main([*argv, "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "replayed at acceptance 1.0" in text and "tokens per verify step" in text
    data = json.loads(out.read_text())
    assert data["speculation"]["acceptance_rate"] == 1.0 and data["spec_replay_acceptance"] == 1.0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--temperature", "0"], "needs --speculative-config"),
        (["--temperature", "1", "--speculative-config", json.dumps(SELF_DRAFT)], "add --temperature 0"),
    ],
)
def test_latency_cli_refuses_replay_without_what_it_needs(extra, message, capsys: pytest.CaptureFixture[str]):
    argv = ["bench", "latency", "--model-config", "tiny-llama", "--random-weights", "--device", "cpu"]
    argv += ["--disable-tqdm", "--num-iters", "1", "--output-len", "4", "--spec-replay-acceptance", "0.8", *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
