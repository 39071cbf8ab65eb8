"""Scheduling of verify steps: drafts ride on ScheduledRequest within the token budget and the KV blocks, and
after the step the request rolls back to its last emitted token (rejected drafts' K/V is never cached)."""

from __future__ import annotations

import argparse

import pytest

from forgellm.cli.engine_args import add_engine_args, engine_config_from_args
from forgellm.config import EngineConfig
from forgellm.errors import ConfigError
from forgellm.spec_decode.config import SpeculativeConfig
from tests.scheduling.test_scheduler import make_request, make_scheduler


def decoding(scheduler, request):
    """Admit `request` and run its prefill step, which samples token 1."""
    scheduler.add_request(request)
    out = scheduler.schedule()
    scheduler.update_from_output(out, {request.request_id: [1]})
    return request


def test_drafts_are_scheduled_after_the_last_token_and_rolled_back_after_verification():
    scheduler = make_scheduler(budget=64, block_size=4)
    request = decoding(scheduler, make_request("a", 6, max_tokens=20))
    assert request.num_computed_tokens == 6 and request.num_tokens == 7
    request.spec_token_ids = [2, 3, 4]
    out = scheduler.schedule()
    (item,) = out.scheduled
    assert (item.start, item.num_new_tokens, item.spec_token_ids, item.samples) == (6, 4, [2, 3, 4], True)
    assert request.spec_token_ids == []  # taken: a stale proposal is never verified twice
    assert len(item.block_ids) * 4 >= 6 + 4  # slots for the last token and every draft
    # Two drafts accepted, then one more token: the third draft's K/V (position 9) is garbage.
    scheduler.update_from_output(out, {"a": [2, 3, 9]})
    assert request.output_token_ids == [1, 2, 3, 9]
    assert request.num_computed_tokens == request.num_tokens - 1 == 9
    # Only blocks full within the tokens known before the step (7 tokens: one block) entered the prefix cache.
    assert scheduler.kv_cache_manager.pool.num_cached_blocks == 1
    out = scheduler.schedule()
    assert [(s.start, s.num_new_tokens, s.spec_token_ids) for s in out.scheduled] == [(9, 1, [])]


def test_drafts_that_do_not_fit_the_budget_are_dropped():
    scheduler = make_scheduler(budget=3)
    request = decoding(scheduler, make_request("a", 2, max_tokens=20))
    request.spec_token_ids = [5, 6, 7, 8]
    (item,) = scheduler.schedule().scheduled
    assert (item.num_new_tokens, item.spec_token_ids) == (3, [5, 6])


def test_drafts_without_free_blocks_are_dropped_rather_than_preempting():
    scheduler = make_scheduler(num_blocks=2, block_size=4, budget=64)
    request = decoding(scheduler, make_request("a", 6, max_tokens=20))  # 7 tokens: both blocks, one slot free
    request.spec_token_ids = [5, 6, 7]
    out = scheduler.schedule()
    assert [(s.num_new_tokens, s.spec_token_ids) for s in out.scheduled] == [(1, [])]
    assert scheduler.num_preemptions == 0


def test_a_prefilling_request_does_not_verify_drafts():
    scheduler = make_scheduler(budget=4)
    request = make_request("a", 10, max_tokens=20)
    scheduler.add_request(request)
    request.spec_token_ids = [5, 6]
    (item,) = scheduler.schedule().scheduled
    assert (item.num_new_tokens, item.spec_token_ids, item.samples) == (4, [], False)


def test_finished_verify_step_frees_every_block():
    scheduler = make_scheduler(num_blocks=16, budget=64, block_size=4)
    request = decoding(scheduler, make_request("a", 5, max_tokens=4, eos=(99,)))
    request.spec_token_ids = [2, 3, 4]
    out = scheduler.schedule()
    scheduler.update_from_output(out, {"a": [2, 99, 4]})  # EOS accepted as a draft: the rest is dropped
    assert request.output_token_ids == [1, 2, 99] and request.status.finish_reason == "stop"
    assert scheduler.num_running == 0 and scheduler.kv_cache_manager.num_free_blocks == 16


def test_engine_config_normalises_and_refuses_bad_speculative_configs():
    config = EngineConfig(speculative_config={"method": "ngram", "num_speculative_tokens": 5})
    assert isinstance(config.speculative_config, SpeculativeConfig)
    assert config.speculative_config.num_speculative_tokens == 5
    with pytest.raises(ConfigError, match="method must be ngram, draft_model or eagle3"):
        EngineConfig(speculative_config={"method": "medusa"})
    with pytest.raises(ConfigError, match="num_speculative_tokens must be a positive integer"):
        EngineConfig(speculative_config={"method": "ngram", "num_speculative_tokens": 0})
    with pytest.raises(ConfigError, match="async_scheduling on does not work with speculative_config"):
        EngineConfig(speculative_config={"method": "ngram"}, async_scheduling="on")


def parse(*flags: str) -> EngineConfig:
    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    return engine_config_from_args(parser.parse_args(list(flags)))


def test_cli_parses_speculative_config_json():
    config = parse("--speculative-config", '{"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3}')
    spec = config.speculative_config
    assert (spec.method, spec.num_speculative_tokens, spec.prompt_lookup_min, spec.prompt_lookup_max) == (
        "ngram",
        2,
        2,
        3,
    )
    assert parse("--speculative-config", "none").speculative_config is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{method: ngram}", "--speculative-config '{method: ngram}' is not valid JSON"),
        ('["ngram"]', "--speculative-config must be a JSON object"),
        ('{"method": "ngram", "k": 3}', r"unknown speculative_config option\(s\) \['k'\]"),
    ],
)
def test_cli_refuses_bad_speculative_config_json(text: str, message: str):
    with pytest.raises(ConfigError, match=message):
        parse("--speculative-config", text)


def test_yaml_config_file_takes_a_speculative_config_mapping(tmp_path):
    path = tmp_path / "engine.yaml"
    path.write_text("speculative_config:\n  method: ngram\n  num_speculative_tokens: 2\n")
    config = parse("--config", str(path))
    assert config.speculative_config == SpeculativeConfig(method="ngram", num_speculative_tokens=2)
    # A flag overrides the file, as for every option.
    assert parse("--config", str(path), "--speculative-config", "none").speculative_config is None
