"""disable_by_batch_size "auto": the governor runs whichever of speculating and plain decoding measured faster
per batch size, probing the other now and then; in the engine it sees decode-only steps of both kinds."""

from __future__ import annotations

import pytest

from forgellm import LLM, SamplingParams
from forgellm.spec_decode.governor import SpeculationGovernor

REPEATED_IDS = [[11, 12, 13, 14, 15] * 4, [30, 31, 32, 33] * 3 + [30, 31]]


def drive(governor: SpeculationGovernor, batch: int, steps: int, rates: dict[bool, float]) -> list[bool]:
    """Decide `steps` steps, each observed at the rate of the chosen mode; returns the decisions."""
    decisions = []
    for _ in range(steps):
        speculate = governor.should_speculate(batch)
        governor.observe(batch, speculate, num_tokens=int(rates[speculate]), seconds=1.0)
        decisions.append(speculate)
    return decisions


@pytest.mark.parametrize("spec_faster", [True, False])
def test_the_faster_mode_runs_and_the_other_is_probed(spec_faster: bool):
    governor = SpeculationGovernor(probe_steps=4, probe_interval=40)
    rates = {True: 300.0, False: 200.0} if spec_faster else {True: 150.0, False: 200.0}
    decisions = drive(governor, 8, 8 + 120, rates)
    assert decisions[:8] == [True] * 4 + [False] * 4  # both measured first, speculation first
    after = decisions[8:]
    assert after.count(spec_faster) == 120 - 3 * 4  # the other mode: 4 probe steps in every 40
    assert after[36:40] == [not spec_faster] * 4


def test_a_probe_that_finds_the_other_mode_faster_switches():
    governor = SpeculationGovernor(probe_steps=4, probe_interval=20, smoothing=0.5)
    drive(governor, 1, 8 + 20, {True: 300.0, False: 200.0})  # speculation wins, plain was probed once
    later = drive(governor, 1, 40, {True: 100.0, False: 200.0})  # acceptance collapsed
    assert later[4:16] == [False] * 12 and later[16:20] == [True] * 4  # switched; speculation is probed
    assert later[20:36] == [False] * 16


def test_batch_sizes_are_measured_apart():
    governor = SpeculationGovernor(probe_steps=2, probe_interval=50)
    drive(governor, 1, 20, {True: 300.0, False: 200.0})
    drive(governor, 32, 20, {True: 900.0, False: 1000.0})
    assert governor.should_speculate(1) and not governor.should_speculate(32)
    assert governor.should_speculate(3) and governor.should_speculate(2)  # the 2-3 bucket is new: measure spec first
    summary = governor.summary()
    assert summary["1"] == {"speculating": 300.0, "plain": 200.0}
    assert summary["32-63"] == {"speculating": 900.0, "plain": 1000.0}


def test_observations_without_tokens_or_time_are_ignored():
    governor = SpeculationGovernor(probe_steps=1, probe_interval=10)
    governor.observe(4, True, num_tokens=0, seconds=1.0)
    governor.observe(4, True, num_tokens=5, seconds=0.0)
    assert not governor.buckets
    with pytest.raises(ValueError, match="probe_steps < probe_interval"):
        SpeculationGovernor(probe_steps=10, probe_interval=10)


def test_the_engine_feeds_decode_steps_of_both_modes_and_outputs_stay_greedy(tiny_model_dir):
    path = str(tiny_model_dir("llama"))
    spec = {"method": "ngram", "num_speculative_tokens": 3, "disable_by_batch_size": "auto"}
    auto = LLM(path, dtype="float32", device="cpu", speculative_config=spec)
    plain = LLM(path, dtype="float32", device="cpu")
    prompts = [{"prompt_token_ids": ids} for ids in REPEATED_IDS]
    params = SamplingParams(temperature=0.0, max_tokens=160, ignore_eos=True)
    got = [out.outputs[0].token_ids for out in auto.generate(prompts, params, use_tqdm=False)]
    assert got == [out.outputs[0].token_ids for out in plain.generate(prompts, params, use_tqdm=False)]
    governor = auto.engine.core.spec_decoder.governor
    samples = governor.buckets[2].samples  # two requests decoding together
    assert samples[True] >= governor.probe_steps and samples[False] >= governor.probe_steps
    assert set(governor.summary()["2-3"]) == {"speculating", "plain"}
