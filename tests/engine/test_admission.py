"""RequestLimits: the one admission check, at its boundaries (one token more or less flips it)."""

from __future__ import annotations

import pytest

from forgellm.config import EngineConfig
from forgellm.engine.admission import RequestLimits
from forgellm.errors import CapacityError, ContextLengthError, InvalidRequestError
from forgellm.sampling_params import SamplingParams


def limits(**overrides) -> RequestLimits:
    values = dict(
        max_model_len=32,
        vocab_size=100,
        block_size=4,
        num_kv_blocks=4,
        max_num_batched_tokens=64,
        enable_chunked_prefill=True,
        max_n=4,
        max_logprobs=5,
        max_stop_strings=2,
        max_stop_str_len=8,
    )
    return RequestLimits(**{**values, **overrides})


def test_from_config_takes_the_engine_options():
    config = EngineConfig(max_n=7, max_logprobs=3, max_stop_strings=2, max_stop_str_len=9, block_size=8)
    got = RequestLimits.from_config(config, max_model_len=100, vocab_size=50, num_kv_blocks=10)
    assert (got.max_n, got.max_logprobs, got.max_stop_strings, got.max_stop_str_len) == (7, 3, 2, 9)
    assert (got.max_model_len, got.vocab_size, got.num_kv_blocks, got.block_size) == (100, 50, 10, 8)


def test_context_length_boundaries():
    lim = limits(num_kv_blocks=100)
    with pytest.raises(ContextLengthError, match="32 tokens but max_model_len is 32"):
        lim.check_length(32, SamplingParams(max_tokens=1))
    assert lim.check_length(31, SamplingParams(max_tokens=1)) == 1
    assert lim.check_length(10, SamplingParams(max_tokens=None)) == 22  # what is left of the context
    with pytest.raises(ContextLengthError, match="at most 22") as err:
        lim.check_length(10, SamplingParams(max_tokens=23))
    assert err.value.param == "max_tokens"
    with pytest.raises(InvalidRequestError, match="min_tokens"):
        lim.check_length(10, SamplingParams(max_tokens=None, min_tokens=23))


def test_kv_capacity_counts_every_token_but_the_last_sampled_one():
    lim = limits()  # 4 blocks of 4 = 16 tokens of KV cache
    assert lim.check_length(8, SamplingParams(max_tokens=9)) == 9  # 16 K/V tokens: fits exactly
    with pytest.raises(CapacityError, match="needs up to 17 tokens of KV cache but the whole cache holds 16"):
        lim.check_length(8, SamplingParams(max_tokens=10))


def test_a_prompt_over_the_step_budget_needs_chunked_prefill():
    lim = limits(max_num_batched_tokens=10, enable_chunked_prefill=False, num_kv_blocks=100)
    assert lim.check_length(10, SamplingParams(max_tokens=1)) == 1
    with pytest.raises(ContextLengthError, match="chunked prefill is off"):
        lim.check_length(11, SamplingParams(max_tokens=1))
    assert limits(max_num_batched_tokens=10, num_kv_blocks=100).check_length(11, SamplingParams(max_tokens=1)) == 1


@pytest.mark.parametrize(
    "params, param, message",
    [
        (SamplingParams(n=5), "n", "at most 4"),
        (SamplingParams(logprobs=6), "logprobs", "at most 5"),
        (SamplingParams(prompt_logprobs=6), "prompt_logprobs", "at most 5"),
        (SamplingParams(stop=["a", "b", "c"]), "stop", "3 stop strings"),
        (SamplingParams(stop=["123456789"]), "stop", "9 characters but at most 8"),
        (SamplingParams(stop_token_ids=[5, 100]), "stop_token_ids", "stop_token_ids: token id 100 is outside"),
        (SamplingParams(logit_bias={3: 1.0, 100: -5.0}), "logit_bias", "logit_bias: token id 100"),
        (SamplingParams(allowed_token_ids=[1, 2, 150]), "allowed_token_ids", "allowed_token_ids: token id 150"),
        (SamplingParams(bad_words_token_ids=[[1], [2, 100]]), "bad_words_token_ids", "token id 100"),
    ],
)
def test_sampling_limits(params, param, message):
    with pytest.raises(InvalidRequestError, match=message) as err:
        limits().check_sampling(params)
    assert err.value.param == param


def test_sampling_at_the_limits_passes():
    limits().check_sampling(
        SamplingParams(n=4, logprobs=5, prompt_logprobs=5, stop=["a", "12345678"], stop_token_ids=[99])
    )
    limits().check_sampling(SamplingParams(logit_bias={99: 100}, allowed_token_ids=[0, 99], bad_words_token_ids=[[99]]))


def test_logprobs_never_exceed_the_vocabulary():
    with pytest.raises(InvalidRequestError, match="at most 10"):
        limits(vocab_size=10, max_logprobs=20).check_sampling(SamplingParams(logprobs=11))


def test_a_text_too_long_for_any_tokenization_is_refused_before_tokenizing():
    lim = limits()  # 32 tokens of at most 3 characters each: with the margin, 192 characters
    lim.check_text_length(192, max_chars_per_token=3)
    with pytest.raises(ContextLengthError, match="193 characters") as err:
        lim.check_text_length(193, max_chars_per_token=3)
    assert err.value.param == "prompt"
