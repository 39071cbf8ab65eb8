"""Completions `echo` and vLLM's `prompt_logprobs`, over HTTP through the openai client.

What lm-eval's `local-completions` sends to score a text (echo, logprobs, max_tokens 0) must give
the prompt tokens' logprobs of the model: checked against transformers' log_softmax on the same
float32 checkpoint. Bad values are 400s naming the field, and the server serves on afterwards.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.serve.conftest import RunningServer

openai = pytest.importorskip("openai")
transformers = pytest.importorskip("transformers")

LOGPROB_ATOL = 1e-4  # float32 forgellm vs float32 transformers, per token
MODEL = "forgellm-demo"  # what ServerSettings() serves, whatever the checkpoint
PROMPT = "The quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def tiny_server(tiny_model_dir, server_factory) -> tuple[RunningServer, str]:
    """A float32 server on a tiny llama checkpoint (the demo tokenizer), and the checkpoint's path."""
    path = str(tiny_model_dir("llama"))
    return server_factory(model=path, max_model_len=256), path


def _hf_prompt_logprobs(path: str, ids: list[int]) -> list[float]:
    """transformers' log-probability of each prompt token after the first, given those before it."""
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    logprobs = logits.float().log_softmax(dim=-1)
    return [logprobs[i - 1, ids[i]].item() for i in range(1, len(ids))]


def test_echo_logprobs_max_tokens_0_match_transformers(tiny_server):
    server, path = tiny_server
    client = server.client()
    ids = server.engine.tokenizer.encode(PROMPT)
    result = client.completions.create(model=MODEL, prompt=PROMPT, echo=True, logprobs=3, max_tokens=0)
    [choice] = result.choices
    assert choice.text == PROMPT
    assert choice.finish_reason == "length"
    assert result.usage.completion_tokens == 0 and result.usage.prompt_tokens == len(ids)
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == len(ids)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None and lp.text_offset[0] == 0
    expected = _hf_prompt_logprobs(path, ids)
    for got, want in zip(lp.token_logprobs[1:], expected):
        assert math.isclose(got, want, abs_tol=LOGPROB_ATOL), (got, want)
    for token, value, top in zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:]):
        assert top[token] == value and 3 <= len(top) <= 4  # the top 3 and the actual token
    assert server.wait_until(server.is_idle)


def test_echo_without_logprobs_and_with_generation(tiny_server):
    server, _ = tiny_server
    client = server.client()
    plain = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0)
    echoed = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0, echo=True)
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text
    assert echoed.choices[0].logprobs is None
    assert echoed.usage.completion_tokens == plain.usage.completion_tokens

    # With logprobs: the prompt's positions first, then the generated ones, offsets running on.
    scored = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0, echo=True, logprobs=1)
    lp = scored.choices[0].logprobs
    num_prompt = scored.usage.prompt_tokens
    assert len(lp.tokens) == num_prompt + scored.usage.completion_tokens
    assert lp.token_logprobs[0] is None and all(v is not None for v in lp.token_logprobs[1:])
    assert lp.text_offset[num_prompt] == len(PROMPT)
    assert "".join(lp.tokens[num_prompt:]) == plain.choices[0].text

    # Token-id prompts are echoed as their decoded text.
    ids = server.engine.tokenizer.encode(PROMPT)
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=0, echo=True)
    assert by_ids.choices[0].text == server.engine.tokenizer.decode(ids, skip_special_tokens=False)


def test_streaming_echo_sends_the_prompt_first(tiny_server):
    server, _ = tiny_server
    client = server.client()
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, echo=True, logprobs=2)
    chunks = list(
        client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, echo=True, logprobs=2, stream=True
        )
    )
    first = chunks[0].choices[0]
    assert first.text == PROMPT and first.finish_reason is None
    assert first.logprobs.token_logprobs[0] is None and len(first.logprobs.tokens) == whole.usage.prompt_tokens
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert tokens == whole.choices[0].logprobs.tokens

    # max_tokens 0 streamed: the prompt, then a finish with no text.
    only = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=0, echo=True, stream=True))
    assert [c.choices[0].text for c in only] == [PROMPT, ""]
    assert only[-1].choices[0].finish_reason == "length"
    assert server.wait_until(server.is_idle)


def test_prompt_logprobs_in_vllm_format(tiny_server):
    server, path = tiny_server
    client = server.client()
    ids = server.engine.tokenizer.encode(PROMPT)
    result = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1, extra_body={"prompt_logprobs": 2})
    entries = result.choices[0].model_extra["prompt_logprobs"]
    assert len(entries) == len(ids) and entries[0] is None
    expected = _hf_prompt_logprobs(path, ids)
    for token_id, entry, want in zip(ids[1:], entries[1:], expected):
        assert math.isclose(entry[str(token_id)]["logprob"], want, abs_tol=LOGPROB_ATOL)
        ranks = sorted(e["rank"] for e in entry.values())
        assert ranks[:2] == [1, 2] and 2 <= len(entry) <= 3
        assert all(isinstance(e["decoded_token"], str) for e in entry.values())

    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=1, extra_body={"prompt_logprobs": 0}
    )
    entries = chat.model_extra["prompt_logprobs"]
    assert entries[0] is None and all(len(e) == 1 for e in entries[1:])
    assert len(entries) == chat.usage.prompt_tokens


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("/v1/completions", {"prompt": PROMPT, "prompt_logprobs": -1}, "prompt_logprobs"),
        ("/v1/completions", {"prompt": PROMPT, "prompt_logprobs": 21}, "prompt_logprobs"),
        ("/v1/completions", {"prompt": PROMPT, "echo": True, "logprobs": 21, "max_tokens": 0}, "logprobs"),
        ("/v1/completions", {"prompt": PROMPT, "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"prompt": PROMPT, "stream": True, "prompt_logprobs": 1}, "prompt_logprobs"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "prompt_logprobs": 99},
            "prompt_logprobs",
        ),
    ],
)
def test_bad_values_are_400s_naming_the_field(tiny_server, route, body, param):
    server, _ = tiny_server
    status, answer = server.request("POST", route, json.dumps(body).encode())
    assert status == 400, answer
    assert answer["error"]["param"] == param
    ok = server.client().completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, echo=True)
    assert ok.choices[0].text.startswith(PROMPT)
