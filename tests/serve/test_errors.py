"""Every error path answers in OpenAI's shape with the right status, and the server keeps serving after it."""

from __future__ import annotations

import http.client
import json

import openai
import pytest

from forgellm.engine.process_engine import ProcessAsyncLLM
from forgellm.serve.settings import ServerSettings
from tests.serve.conftest import metric_value

KEY = "test-key"


def assert_still_serves(server) -> None:
    """A normal request right after an error gets a normal answer."""
    out = server.client().completions.create(model="forgellm-demo", prompt="ok", max_tokens=2, temperature=0)
    assert out.usage.completion_tokens >= 1


def assert_error(status_body: tuple[int, dict], status: int, param: str | None = None, *words: str) -> dict:
    code, body = status_body
    assert code == status, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    for word in words:
        assert word in error["message"], error["message"]
    return error


@pytest.fixture(scope="module")
def guarded(server_factory):
    """API key, one running sequence at most, one waiting at most, a 4 KiB body limit."""
    settings = ServerSettings(api_key=KEY, max_request_bytes=4096)
    return server_factory(settings, max_num_seqs=1, max_waiting_requests=1)


BAD_REQUESTS = [
    ({"prompt": "x", "temperature": -1}, "temperature", "temperature"),
    ({"prompt": "x", "bogus_field": 1}, "bogus_field", "unrecognized"),
    ({"prompt": "x", "max_tokens": "many"}, "max_tokens", "integer"),
    ({"prompt": "x", "n": 0}, "n", "n must"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens", "echo"),  # 0 only with echo
    ({"prompt": "x", "suffix": "y"}, "suffix", "suffix"),
    ({"prompt": "x", "logit_bias": {"1": 500}}, "logit_bias", "[-100, 100]"),
    ({"prompt": "x", "logit_bias": {"01": 5}}, "logit_bias", "decimal"),
    ({"prompt": "x", "logit_bias": {"99999": 5}}, "logit_bias", "vocabulary"),
    ({"prompt": "x", "allowed_token_ids": []}, "allowed_token_ids", "non-empty"),
    ({"prompt": "x", "allowed_token_ids": [5, 999999]}, "allowed_token_ids", "vocabulary"),
    ({"prompt": "x", "bad_words": ["  "]}, "bad_words", "non-blank"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options", "stream"),
    ({"prompt": []}, "prompt", "empty"),
    ({"prompt": [5, 999999]}, "prompt", "vocabulary"),
    ({}, "prompt", "required"),
]


@pytest.mark.parametrize(("body", "param", "word"), BAD_REQUESTS)
def test_invalid_completion_fields_name_the_field(demo_server, body, param, word):
    assert_error(demo_server.request("POST", "/v1/completions", body), 400, param, word)


BAD_CHATS = [
    ({"tools": [{"type": "function"}]}, "tools.0"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    (
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x"}}]}]},
        "messages.0.content.0",
    ),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
    ({"messages": []}, "messages"),
    ({"top_logprobs": 2}, "top_logprobs"),
]


@pytest.mark.parametrize(("extra", "param"), BAD_CHATS)
def test_unsupported_chat_fields_are_rejected_by_name(demo_server, extra, param):
    body = {"messages": [{"role": "user", "content": "hi"}], **extra}
    assert_error(demo_server.request("POST", "/v1/chat/completions", body), 400, param)
    assert_still_serves(demo_server)


def test_bad_json_and_unknown_routes(demo_server):
    assert_error(demo_server.request("POST", "/v1/completions", b"{not json"), 400, None, "JSON")
    assert_error(demo_server.request("POST", "/v1/completions", b"[1, 2]"), 400, None, "object")
    assert_error(demo_server.request("GET", "/v1/nothing"), 404)
    assert_error(demo_server.request("GET", "/v1/completions"), 405)
    conn = http.client.HTTPConnection("127.0.0.1", demo_server.port, timeout=30)
    try:
        conn.request("GET", "/v1/completions")
        assert conn.getresponse().getheader("allow") == "POST"  # what a 405 must say
    finally:
        conn.close()
    assert_still_serves(demo_server)


def test_bad_request_ids_and_deep_json(demo_server):
    for bad in ("x" * 257, "tab\there"):
        error = assert_error(
            demo_server.request("POST", "/v1/completions", {"prompt": "x"}, {"X-Request-Id": bad}), 400, "X-Request-Id"
        )
        assert "printable" in error["message"]
    deep = b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # past the JSON parser's recursion limit
    assert_error(demo_server.request("POST", "/v1/completions", deep), 400, None, "nested too deeply")
    assert_still_serves(demo_server)


def test_context_length_errors_give_both_numbers(demo_server):
    client = demo_server.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="forgellm-demo", prompt=[5] * 1100, max_tokens=2)
    error = caught.value.body
    assert caught.value.status_code == 400 and error["code"] == "context_length_exceeded"
    assert "1100" in error["message"] and "1024" in error["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="forgellm-demo", prompt=[5] * 1000, max_tokens=100)
    assert caught.value.body["param"] == "max_tokens" and "1100" in caught.value.body["message"]
    assert_still_serves(demo_server)


def test_unknown_model_is_404(demo_server):
    with pytest.raises(openai.NotFoundError) as caught:
        demo_server.client().chat.completions.create(model="gpt-7", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["code"] == "model_not_found" and "gpt-7" in caught.value.body["message"]
    assert_still_serves(demo_server)


def test_api_key_is_required(guarded):
    client = openai.OpenAI(base_url=f"{guarded.base_url}/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.models.list()
    assert caught.value.status_code == 401 and caught.value.body["code"] == "invalid_api_key"
    body = {"model": "forgellm-demo", "prompt": "x"}
    assert_error(guarded.request("POST", "/v1/completions", body), 401)  # no key at all
    assert_error(guarded.request("POST", "/tokenize", {"prompt": "x"}, {"Authorization": "Basic abc"}), 401)
    assert guarded.request("GET", "/health")[0] == 200  # probes need no key
    assert guarded.client(api_key=KEY).models.list().data[0].id == "forgellm-demo"
    assert_still_serves(guarded)


def test_oversized_body_is_413(guarded):
    auth = {"Authorization": f"Bearer {KEY}"}
    body = json.dumps({"prompt": "x" * 10_000, "max_tokens": 1}).encode()
    assert_error(guarded.request("POST", "/v1/completions", body, auth), 413, None, "4096")
    # A chunked body declares no length: the limit is counted as it arrives.
    conn = http.client.HTTPConnection("127.0.0.1", guarded.port, timeout=30)
    try:
        chunks = (body[i : i + 1000] for i in range(0, len(body), 1000))
        conn.request("POST", "/v1/completions", body=chunks, headers=auth, encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 413 and json.loads(response.read())["error"]["code"] == "request_too_large"
    finally:
        conn.close()
    assert metric_value(guarded.metrics(), "forgellm_request_errors_total", '{status="413"}') == 2
    assert_still_serves(guarded)


def test_full_queue_is_429(guarded):
    client = guarded.client()
    # 1,000 tokens take seconds even on a fast machine: the first request cannot end during the test.
    args = dict(model="forgellm-demo", prompt="x", max_tokens=1000, stream=True, extra_body={"ignore_eos": True})
    running = client.completions.create(**args)
    next(iter(running))  # the first request runs (max_num_seqs=1) ...
    waiting = client.completions.create(**args)  # ... the second is admitted (the response has started) and waits
    assert guarded.engine.num_waiting() == 1
    with pytest.raises(openai.RateLimitError) as caught:
        client.completions.create(model="forgellm-demo", prompt="x", max_tokens=2)
    assert caught.value.status_code == 429 and caught.value.response.headers["retry-after"] == "1"
    running.close()
    waiting.close()
    assert guarded.wait_until(guarded.is_idle)
    assert_still_serves(guarded)


def test_engine_process_death_mid_stream_is_an_sse_error_then_503(server_factory):
    server = server_factory(engine_class=ProcessAsyncLLM)  # whichever engine the other tests use
    client = server.client()
    stream = client.completions.create(
        model="forgellm-demo", prompt="x", max_tokens=1000, stream=True, extra_body={"ignore_eos": True}
    )
    chunks = iter(stream)
    next(chunks)
    server.engine._process.kill()  # as the OOM killer or a crashed driver would
    with pytest.raises(openai.APIError) as caught:
        for _ in chunks:
            pass
    assert "engine process exited" in str(caught.value)
    assert not server.engine.is_alive  # set before the streams got their error
    assert_error(server.request("GET", "/health"), 503)
    with pytest.raises(openai.InternalServerError) as refused:
        client.completions.create(model="forgellm-demo", prompt="x", max_tokens=2)
    assert refused.value.status_code == 503 and refused.value.body["code"] == "engine_dead"
    assert metric_value(server.metrics(), "forgellm_engine_alive") == 0.0
