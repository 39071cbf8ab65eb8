"""Logit controls end to end on the CPU: what they forbid never comes out, under asynchronous scheduling and
speculative decoding too (which must give the same greedy tokens as the plain synchronous engine)."""

from __future__ import annotations

import pytest

from forgellm import LLM, SamplingParams

PROMPTS = [{"prompt_token_ids": [11, 12, 13, 14, 15] * 4}, {"prompt_token_ids": list(range(40, 60))}]


@pytest.fixture(scope="module")
def engines(tiny_model_dir):  # noqa: ANN201
    path = str(tiny_model_dir("llama"))
    ngram = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1}
    return {
        "sync": LLM(path, dtype="float32", device="cpu", async_scheduling="off"),
        "async": LLM(path, dtype="float32", device="cpu", async_scheduling="on"),
        "ngram": LLM(path, dtype="float32", device="cpu", speculative_config=ngram),
    }


def tokens(llm: LLM, params: SamplingParams) -> list[list[list[int]]]:
    return [[list(c.token_ids) for c in out.outputs] for out in llm.generate(PROMPTS, params, use_tqdm=False)]


def greedy(**controls: object) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, **controls)


def contains(sequence: list[int], word: list[int]) -> bool:
    return any(sequence[i : i + len(word)] == word for i in range(len(sequence) - len(word) + 1))


def test_bad_words_never_appear_and_every_engine_agrees(engines):
    plain = tokens(engines["sync"], greedy())
    # Ban a two-token word and a token that plain decoding produced (both occur in its outputs).
    first = plain[0][0]
    words = [first[2:4], [plain[1][0][5]]]
    assert all(contains(seq[0], words[1]) or contains(seq[0], words[0]) for seq in plain)
    results = {name: tokens(llm, greedy(bad_words_token_ids=words)) for name, llm in engines.items()}
    for out in results["sync"]:
        assert not any(contains(out[0], word) for word in words)
    assert results["sync"] != plain
    assert results["async"] == results["sync"] and results["ngram"] == results["sync"]


def test_allowed_token_ids_and_logit_bias_in_sampling_and_speculation(engines):
    allowed = [17, 23, 42, 99]
    params = SamplingParams(temperature=1.0, max_tokens=24, ignore_eos=True, n=3, seed=5, allowed_token_ids=allowed)
    for llm in engines.values():
        for request in tokens(llm, params):
            assert all(set(seq) <= set(allowed) for seq in request) and len(request) == 3
    forced = {name: tokens(llm, greedy(logit_bias={77: 100.0})) for name, llm in engines.items()}
    assert forced["sync"] == [[[77] * 24], [[77] * 24]]
    assert forced["async"] == forced["sync"] == forced["ngram"]
    assert engines["ngram"].engine.stats().num_accepted_tokens > 0  # the forced tokens were drafted and accepted


def test_bad_words_given_as_text_are_tokenized_both_ways(engines):
    llm = engines["sync"]
    processed = llm.engine.process("hello", SamplingParams(bad_words=["fibonacci", " return"]))
    encode = llm.get_tokenizer().encode
    expected = [encode(text, add_special_tokens=False) for text in ("fibonacci", " fibonacci", " return")]
    assert processed.sampling_params.bad_words_token_ids == expected
    assert processed.sampling_params.bad_words is None
