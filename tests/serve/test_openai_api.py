"""The OpenAI API through the official `openai` client: chat, completions, streaming, n, stop, seed, logprobs."""

from __future__ import annotations

import pytest

from forgellm import LLM, SamplingParams

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def reference_llm() -> LLM:
    """The offline API on the same model and dtype, to compare texts with."""
    return LLM(dtype="float32", max_model_len=1024, cpu_kv_cache_gb=0.25)


def test_chat_completion_matches_offline_chat(demo_server, reference_llm):
    client = demo_server.client()
    response = client.chat.completions.create(model="forgellm-demo", messages=MESSAGES, max_tokens=12, temperature=0)
    [choice] = response.choices
    expected = reference_llm.chat(MESSAGES, SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected.outputs[0].text
    assert choice.finish_reason == expected.outputs[0].finish_reason
    assert response.usage.prompt_tokens == len(expected.prompt_token_ids)
    assert response.usage.completion_tokens == len(expected.outputs[0].token_ids)
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    assert response.model == "forgellm-demo" and response.id.startswith("chatcmpl-")


def test_chat_stream_has_usage_in_last_chunk_only(demo_server):
    client = demo_server.client()
    chunks = list(
        client.chat.completions.create(
            messages=MESSAGES,
            model="forgellm-demo",
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == 10
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    blocking = client.chat.completions.create(
        messages=MESSAGES, model="forgellm-demo", max_tokens=10, temperature=0, extra_body={"ignore_eos": True}
    )
    assert text == blocking.choices[0].message.content


def test_completions_stream_and_not_agree(demo_server, reference_llm):
    client = demo_server.client()
    prompt = "def add(a, b):\n    return"
    args = dict(model="forgellm-demo", prompt=prompt, max_tokens=16, temperature=0, extra_body={"ignore_eos": True})
    whole = client.completions.create(**args)
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **args) if c.choices)
    offline = reference_llm.generate(
        prompt, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True), use_tqdm=False
    )
    assert whole.choices[0].text == streamed == offline[0].outputs[0].text
    assert whole.usage.completion_tokens == 16 and whole.choices[0].finish_reason == "length"


def test_completions_take_several_prompts_and_token_ids(demo_server, reference_llm):
    client = demo_server.client()
    ids = reference_llm.get_tokenizer().encode("import os")
    response = client.completions.create(
        model="forgellm-demo", prompt=[ids, ids], max_tokens=5, temperature=0, n=2, extra_body={"ignore_eos": True}
    )
    assert sorted(c.index for c in response.choices) == [0, 1, 2, 3]
    assert len({c.text for c in response.choices}) == 1  # greedy: every choice of the same prompt agrees
    assert response.usage.prompt_tokens == 2 * len(ids) and response.usage.completion_tokens == 20
    texts = client.completions.create(model="forgellm-demo", prompt=["a", "b = 1"], max_tokens=3, temperature=0)
    assert [c.index for c in texts.choices] == [0, 1]


def test_n_and_seed(demo_server):
    client = demo_server.client()
    args = dict(model="forgellm-demo", messages=MESSAGES, max_tokens=12, temperature=1.0, n=2, seed=1234)
    first = client.chat.completions.create(**args)
    again = client.chat.completions.create(**args)
    other = client.chat.completions.create(**{**args, "seed": 99})
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1]
    assert texts == [c.message.content for c in again.choices]  # same seed, same samples
    assert texts != [c.message.content for c in other.choices]
    assert first.usage.completion_tokens >= 2  # both choices count; each has at least one token
    stream = client.chat.completions.create(stream=True, **args)
    streamed = ["", ""]
    for chunk in stream:
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
    assert streamed == texts


def test_stop_strings(demo_server):
    client = demo_server.client()
    args = dict(model="forgellm-demo", prompt="def f(x):", max_tokens=24, temperature=0)
    full = client.completions.create(**args, extra_body={"ignore_eos": True}).choices[0].text
    stop = full[5:8]
    assert stop and stop in full
    cut = client.completions.create(**args, stop=[stop], extra_body={"ignore_eos": True}).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full[: full.index(stop)]
    streamed = client.completions.create(**args, stop=stop, stream=True, extra_body={"ignore_eos": True})
    assert "".join(c.choices[0].text for c in streamed if c.choices) == cut.text


def test_chat_logprobs(demo_server):
    client = demo_server.client()
    response = client.chat.completions.create(
        model="forgellm-demo", messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)  # greedy picks the top token
        assert entry.token == entry.top_logprobs[0].token
    stream = client.chat.completions.create(
        model="forgellm-demo",
        messages=MESSAGES,
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        stream=True,
    )
    streamed = [e for c in stream if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in content]


def test_completion_logprobs(demo_server):
    client = demo_server.client()
    choice = client.completions.create(
        model="forgellm-demo", prompt="x = ", max_tokens=4, temperature=0, logprobs=2
    ).choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 4
    assert "".join(lp.tokens) == choice.text
    assert all(2 <= len(top) <= 3 for top in lp.top_logprobs)
    assert lp.text_offset[0] == 0


def test_models_health_version_tokenize(demo_server, reference_llm):
    client = demo_server.client()
    assert [m.id for m in client.models.list().data] == ["forgellm-demo"]
    assert demo_server.request("GET", "/health") == (200, {"status": "ok"})
    status, version = demo_server.request("GET", "/version")
    assert status == 200 and version["version"]
    status, body = demo_server.request("POST", "/tokenize", {"prompt": "hello world"})
    assert status == 200 and body["tokens"] == reference_llm.get_tokenizer().encode("hello world")
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == 1024
    status, chat = demo_server.request("POST", "/tokenize", {"messages": MESSAGES})
    assert chat["tokens"] == reference_llm.render_chat(MESSAGES)
    status, text = demo_server.request("POST", "/detokenize", {"tokens": body["tokens"]})
    assert status == 200 and text["prompt"] == "hello world"


def test_metrics_count_requests_and_tokens(demo_server):
    from tests.serve.conftest import metric_value

    before = demo_server.metrics()
    demo_server.client().completions.create(
        model="forgellm-demo", prompt="abc", max_tokens=7, temperature=0, extra_body={"ignore_eos": True}
    )
    after = demo_server.metrics()
    key = ("forgellm_request_finished_total", '{finish_reason="length"}')
    assert metric_value(after, *key) == metric_value(before, *key) + 1
    assert (
        metric_value(after, "forgellm_generation_tokens_total")
        == metric_value(before, "forgellm_generation_tokens_total") + 7
    )
    assert metric_value(after, "forgellm_time_to_first_token_seconds_count") > 0
    for gauge in ("forgellm_num_requests_running", "forgellm_kv_cache_usage_ratio", "forgellm_num_preemptions_total"):
        assert f"\n{gauge} " in after
