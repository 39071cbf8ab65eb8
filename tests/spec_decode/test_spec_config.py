"""SpeculativeConfig: parsing from dicts, defaults, and every bad input with the message it gets."""

from __future__ import annotations

import re

import pytest

from forgellm.errors import ConfigError
from forgellm.spec_decode.config import (
    SpeculativeConfig,
    check_draft_vocab,
    check_eagle3_hidden_size,
)


def test_none_means_no_speculation() -> None:
    assert SpeculativeConfig.from_dict(None) is None


def test_ngram_defaults() -> None:
    config = SpeculativeConfig.from_dict({"method": "ngram"})
    assert config == SpeculativeConfig(
        method="ngram", model=None, num_speculative_tokens=3, prompt_lookup_min=2, prompt_lookup_max=4
    )
    assert config.disable_by_batch_size is None


@pytest.mark.parametrize(
    ("given", "resolved"),
    [
        ({}, (2, 4)),
        ({"prompt_lookup_max": 1}, (1, 1)),  # min's default moves down to meet a low max
        ({"prompt_lookup_max": 6}, (2, 6)),
        ({"prompt_lookup_min": 1}, (1, 4)),
        ({"prompt_lookup_min": 7}, (7, 7)),  # max's default moves up to meet a high min
        ({"prompt_lookup_min": 3, "prompt_lookup_max": 3}, (3, 3)),
    ],
)
def test_unset_ngram_sizes_fit_the_set_one(given: dict, resolved: tuple[int, int]) -> None:
    config = SpeculativeConfig.from_dict({"method": "ngram", **given})
    assert (config.prompt_lookup_min, config.prompt_lookup_max) == resolved


def test_model_methods_keep_their_path_and_no_ngram_sizes() -> None:
    config = SpeculativeConfig.from_dict(
        {"method": "draft_model", "model": "forgellm/assets/demo-draft", "num_speculative_tokens": 5}
    )
    assert (config.model, config.num_speculative_tokens) == ("forgellm/assets/demo-draft", 5)
    assert (config.prompt_lookup_min, config.prompt_lookup_max) == (None, None)
    eagle = SpeculativeConfig(method="eagle3", model="/heads/eagle3", disable_by_batch_size=16)
    assert eagle.model == "/heads/eagle3" and eagle.disable_by_batch_size == 16


def test_a_config_object_passes_through_from_dict() -> None:
    config = SpeculativeConfig(method="ngram")
    assert SpeculativeConfig.from_dict(config) is config


def test_should_speculate_turns_off_above_the_batch_size() -> None:
    config = SpeculativeConfig(method="ngram", disable_by_batch_size=8)
    assert [config.should_speculate(n) for n in (1, 8, 9, 32)] == [True, True, False, False]
    assert SpeculativeConfig(method="ngram").should_speculate(10_000)
    assert SpeculativeConfig(method="ngram", disable_by_batch_size="auto").should_speculate(10_000)  # the governor's


BAD_DICTS = [
    (
        {"method": "medusa"},
        "speculative_config.method must be ngram, draft_model or eagle3, got 'medusa'",
    ),
    ({"model": "/ckpt"}, "speculative_config needs a method: ngram, draft_model or eagle3"),
    (
        {"method": "ngram", "k": 3, "draft": 1},
        "unknown speculative_config option(s) ['draft', 'k']; known: ['method', 'model', 'num_speculative_tokens', "
        "'prompt_lookup_min', 'prompt_lookup_max', 'disable_by_batch_size']",
    ),
    (
        {"method": "ngram", "model": "/ckpt"},
        "speculative_config.model is for methods draft_model or eagle3; method ngram drafts from the request's own "
        "tokens and takes no model, got '/ckpt'",
    ),
    (
        {"method": "draft_model"},
        "speculative_config.method draft_model needs a model: the draft model's checkpoint directory, got None",
    ),
    (
        {"method": "eagle3", "model": ""},
        "speculative_config.method eagle3 needs a model: the EAGLE-3 head's checkpoint directory, got ''",
    ),
    (
        {"method": "ngram", "num_speculative_tokens": 0},
        "speculative_config.num_speculative_tokens must be a positive integer, got 0",
    ),
    (
        {"method": "ngram", "num_speculative_tokens": -2},
        "speculative_config.num_speculative_tokens must be a positive integer, got -2",
    ),
    (
        {"method": "ngram", "num_speculative_tokens": True},
        "speculative_config.num_speculative_tokens must be a positive integer, got True",
    ),
    (
        {"method": "ngram", "num_speculative_tokens": "4"},
        "speculative_config.num_speculative_tokens must be a positive integer, got '4'",
    ),
    (
        {"method": "ngram", "disable_by_batch_size": 0},
        'speculative_config.disable_by_batch_size must be a positive integer, "auto" (measure) or None (always '
        "speculate), got 0",
    ),
    (
        {"method": "ngram", "prompt_lookup_min": 0},
        "speculative_config.prompt_lookup_min must be a positive integer, got 0",
    ),
    (
        {"method": "ngram", "prompt_lookup_max": 2.5},
        "speculative_config.prompt_lookup_max must be a positive integer, got 2.5",
    ),
    (
        {"method": "ngram", "prompt_lookup_min": 5, "prompt_lookup_max": 3},
        "speculative_config.prompt_lookup_min (5) must be <= prompt_lookup_max (3); lower the first or raise the "
        "second",
    ),
    (
        {"method": "eagle3", "model": "/head", "prompt_lookup_max": 3},
        "speculative_config.prompt_lookup_max is for method ngram only; method eagle3 does not look up n-grams, got 3",
    ),
]


@pytest.mark.parametrize(("values", "message"), BAD_DICTS)
def test_bad_dicts_name_the_option_and_the_fix(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        SpeculativeConfig.from_dict(values)


@pytest.mark.parametrize("values", [["ngram"], "ngram", 3])
def test_a_non_dict_is_refused(values: object) -> None:
    with pytest.raises(ConfigError, match=r"speculative_config must be a dict such as \{'method': 'ngram'"):
        SpeculativeConfig.from_dict(values)


def test_a_config_error_is_a_value_error() -> None:
    # LLM(...) callers that catch ValueError for bad arguments catch these too.
    with pytest.raises(ValueError):
        SpeculativeConfig(method="ngram", num_speculative_tokens=0)


def test_k_that_fits_the_context_is_accepted() -> None:
    SpeculativeConfig(method="ngram", num_speculative_tokens=6).validate_for_model(8)
    SpeculativeConfig(method="ngram", num_speculative_tokens=1).validate_for_model(3)


@pytest.mark.parametrize(
    ("k", "max_model_len", "message"),
    [
        (
            7,
            8,
            "speculative_config.num_speculative_tokens is 7 but max_model_len is 8: a verify step holds a prompt "
            "token, the last emitted token and 7 drafts (9 positions); lower num_speculative_tokens to at "
            "most 6 or raise max_model_len to at least 9",
        ),
        (
            1,
            2,
            "speculative_config.num_speculative_tokens is 1 but max_model_len is 2: a verify step holds a prompt "
            "token, the last emitted token and 1 draft (3 positions); raise max_model_len to at least 3",
        ),
    ],
)
def test_k_too_large_for_the_context_says_the_numbers(k: int, max_model_len: int, message: str) -> None:
    config = SpeculativeConfig(method="ngram", num_speculative_tokens=k)
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        config.validate_for_model(max_model_len)


def test_draft_vocab_must_match_and_the_error_says_both_sizes() -> None:
    check_draft_vocab(8192, 8192, "/drafts/demo-draft")
    message = (
        "draft model '/drafts/small' has a vocabulary of 32000 tokens but the target model's has 128256; "
        "speculative_config.model must share the target's tokenizer and vocabulary (e.g. demo-draft for demo)"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        check_draft_vocab(128256, 32000, "/drafts/small")


def test_eagle3_hidden_size_must_match_and_the_error_says_both_sizes() -> None:
    check_eagle3_hidden_size(4096, 4096, "/heads/eagle3-8b")
    message = (
        "EAGLE-3 head '/heads/eagle3-70b' has hidden size 8192 but the target model's is 4096; "
        "speculative_config.model must be an EAGLE-3 head trained for this target model"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        check_eagle3_hidden_size(4096, 8192, "/heads/eagle3-70b")
