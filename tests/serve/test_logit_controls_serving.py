"""logit_bias (OpenAI's) and vLLM's allowed_token_ids / bad_words through the server with the openai client,
each followed by a normal request."""

from __future__ import annotations

from tests.serve.test_errors import assert_still_serves

MODEL = "forgellm-demo"
QUESTION = [{"role": "user", "content": "Write a Python function."}]


def detokenize(server, ids: list[int]) -> str:  # noqa: ANN001
    status, body = server.request("POST", "/detokenize", {"tokens": ids})
    assert status == 200, body
    return body["prompt"]


def test_logit_bias_forces_a_token_and_bad_words_remove_a_word(demo_server):
    client = demo_server.client()
    forced = client.completions.create(
        model=MODEL, prompt="def add(a, b):", max_tokens=6, temperature=0, logit_bias={"300": 100}
    )
    assert forced.choices[0].text == detokenize(demo_server, [300] * 6)
    plain = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24, temperature=0)
    word = max(plain.choices[0].message.content.split(), key=len)
    banned = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=24, temperature=0, extra_body={"bad_words": [word]}
    )
    assert word not in banned.choices[0].message.content
    assert_still_serves(demo_server)


def test_allowed_token_ids_bound_every_sampled_token(demo_server):
    client = demo_server.client()
    allowed = [300, 301, 302, 303]
    texts = {detokenize(demo_server, [token]) for token in allowed}
    out = client.completions.create(
        model=MODEL,
        prompt="import os",
        max_tokens=12,
        temperature=1.0,
        n=3,
        seed=1,
        logprobs=0,
        extra_body={"allowed_token_ids": allowed, "ignore_eos": True},
    )
    for choice in out.choices:
        assert len(choice.logprobs.tokens) == 12 and set(choice.logprobs.tokens) <= texts
    assert_still_serves(demo_server)
