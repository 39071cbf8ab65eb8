"""Protocol extras third-party clients rely on, over HTTP against a real server: vLLM's
continuous_usage_stats (guidellm), GET /v1/models/{id} (openai's models.retrieve), a 404 that lists
the routes, HEAD, and strict JSON types (a wrong type is a 400 naming the field, never coerced).
Every error is followed by a normal request that must succeed."""

from __future__ import annotations

import http.client

import openai
import pytest

from tests.serve.test_errors import assert_error, assert_still_serves

MODEL = "forgellm-demo"
BOTH = {"include_usage": True, "continuous_usage_stats": True}


def _check_running_usage(chunks: list, prompt_tokens: int | None = None) -> tuple[int, int]:
    """Every chunk with choices carries usage; completion tokens never fall; totals add up.
    Returns (prompt tokens, the last chunk's completion tokens)."""
    with_choices = [c for c in chunks if c.choices]
    assert with_choices
    seen = 0
    for chunk in with_choices:
        assert chunk.usage is not None, chunk
        usage = chunk.usage
        prompt_tokens = usage.prompt_tokens if prompt_tokens is None else prompt_tokens
        assert usage.prompt_tokens == prompt_tokens > 0
        assert usage.completion_tokens >= seen
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        seen = usage.completion_tokens
    return prompt_tokens, seen


def test_completions_stream_usage_in_every_chunk(demo_server):
    client = demo_server.client()
    chunks = list(
        client.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0, stream=True, stream_options=BOTH
        )
    )
    prompt_tokens, last = _check_running_usage(chunks)
    assert last == 6
    final = chunks[-1]  # include_usage keeps its meaning: a last chunk without choices holds the totals
    assert final.choices == [] and final.usage.completion_tokens == 6 and final.usage.prompt_tokens == prompt_tokens
    # The figures match the request that is not streamed.
    whole = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0)
    assert whole.usage.prompt_tokens == prompt_tokens


def test_chat_stream_usage_in_every_chunk_from_the_first(demo_server):
    messages = [{"role": "user", "content": "Hello there"}]
    chunks = list(
        demo_server.client().chat.completions.create(
            model=MODEL, messages=messages, max_tokens=5, temperature=0, n=2, stream=True, stream_options=BOTH
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].usage.completion_tokens == 0
    prompt_tokens, last = _check_running_usage(chunks)
    assert last == 10  # n=2: both choices' tokens
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == prompt_tokens + 10


def test_continuous_usage_alone_sends_no_final_usage_chunk(demo_server):
    """The two options are independent: without include_usage no chunk lacks choices."""
    chunks = list(
        demo_server.client().completions.create(
            model=MODEL,
            prompt=["one", "two three"],
            max_tokens=3,
            temperature=0,
            stream=True,
            extra_body={"stream_options": {"continuous_usage_stats": True}},
        )
    )
    assert all(c.choices for c in chunks)
    assert all(c.usage is not None for c in chunks)
    assert chunks[-1].usage.completion_tokens == 6  # two prompts, three tokens each
    # Without either option, chunks carry no usage at all.
    plain = list(demo_server.client().completions.create(model=MODEL, prompt="x", max_tokens=2, stream=True))
    assert all(c.usage is None for c in plain)


def test_stream_options_keys_are_typed_and_known(demo_server):
    body = {"prompt": "x", "max_tokens": 2, "stream": True}
    for options, word in (({"continuous_usage_stats": "yes"}, "boolean"), ({"continuous_usage": True}, "unrecognized")):
        param = f"stream_options.{next(iter(options))}"
        answer = demo_server.request("POST", "/v1/completions", {**body, "stream_options": options})
        assert_error(answer, 400, param, word)
        assert_still_serves(demo_server)


def test_models_retrieve_returns_the_listed_card(demo_server):
    client = demo_server.client()
    card = client.models.retrieve(MODEL)
    assert card.model_dump() == client.models.list().data[0].model_dump()
    assert card.id == MODEL and card.object == "model"


@pytest.mark.parametrize("model_id", ["gpt-7", "org/no-such-model"])
def test_an_unknown_model_id_is_404_naming_it_and_the_served_names(demo_server, model_id):
    with pytest.raises(openai.NotFoundError) as caught:
        demo_server.client().models.retrieve(model_id)
    error = caught.value.body
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert model_id in error["message"] and MODEL in error["message"]
    assert_still_serves(demo_server)


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/nothing"), ("POST", "/v2/completions"), ("DELETE", "/")])
def test_an_unknown_route_is_404_listing_the_routes(demo_server, method, path):
    error = assert_error(demo_server.request(method, path, b"{}" if method == "POST" else None), 404, None, path)
    assert error["code"] == "not_found" and error["type"] == "invalid_request_error"
    for route in ("POST /v1/completions", "POST /v1/chat/completions", "GET /v1/models/{model_id}", "GET /health"):
        assert route in error["message"], error["message"]
    assert_still_serves(demo_server)


def _raw(server, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_head_answers_like_get_without_a_body(demo_server):
    status, headers, body = _raw(demo_server, "HEAD", "/health")
    assert (status, body) == (200, b"")
    assert headers["content-type"] == "application/json"
    get_status, get_headers, get_body = _raw(demo_server, "GET", "/health")
    assert get_status == 200 and headers["content-length"] == get_headers["content-length"] == str(len(get_body))
    assert _raw(demo_server, "HEAD", "/v1/models")[:3:2] == (200, b"")
    status, headers, body = _raw(demo_server, "HEAD", "/v1/completions")  # a POST route: 405, as GET
    assert (status, headers["allow"], body) == (405, "POST", b"")
    assert _raw(demo_server, "HEAD", "/nowhere")[:3:2] == (404, b"")
    status, headers, _ = _raw(demo_server, "POST", "/health")  # a 405 names HEAD where GET is served
    assert (status, headers["allow"]) == (405, "GET, HEAD")
    assert_still_serves(demo_server)


# Each value has the wrong JSON type for its field: refused by name, never coerced.
WRONG_TYPES = [
    ("/v1/completions", {"max_tokens": "5"}, "max_tokens", "integer", 'string "5"'),
    ("/v1/completions", {"stream": "true"}, "stream", "boolean", "string"),
    ("/v1/completions", {"presence_penalty": True}, "presence_penalty", "number", "boolean true"),
    ("/v1/completions", {"temperature": "0.5"}, "temperature", "number", "string"),
    ("/v1/completions", {"n": 1.0}, "n", "integer", "number 1.0"),  # as vLLM: 1.0 is no integer
    ("/v1/completions", {"seed": 7.5}, "seed", "integer", "number"),
    ("/v1/completions", {"logprobs": True}, "logprobs", "integer", "boolean"),
    ("/v1/completions", {"ignore_eos": 1}, "ignore_eos", "boolean", "integer 1"),
    ("/v1/completions", {"stop": 5}, "stop", "string", "integer"),
    ("/v1/completions", {"stop_token_ids": ["5"]}, "stop_token_ids.0", "integer", "string"),
    ("/v1/completions", {"user": 42}, "user", "string", "integer"),
    ("/v1/chat/completions", {"max_completion_tokens": "3"}, "max_completion_tokens", "integer", "string"),
    ("/v1/chat/completions", {"logprobs": "true"}, "logprobs", "boolean", "string"),
    ("/v1/chat/completions", {"top_p": [1]}, "top_p", "number", "array"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages.0.content", "string", "integer"),
    ("/tokenize", {"prompt": "x", "add_special_tokens": "false"}, "add_special_tokens", "boolean", "string"),
    ("/detokenize", {"tokens": [1.0]}, "tokens.0", "integer", "number"),
]
BASES = {
    "/v1/completions": {"prompt": "hi", "max_tokens": 2},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    "/tokenize": {},
    "/detokenize": {},
}


@pytest.mark.parametrize(("path", "fields", "param", "expected", "got"), WRONG_TYPES)
def test_a_wrong_json_type_is_400_naming_the_field(demo_server, path, fields, param, expected, got):
    body = {**BASES[path], **fields}
    error = assert_error(demo_server.request("POST", path, body), 400, param, expected, got)
    assert error["code"] == "invalid_value"
    assert_still_serves(demo_server)


def test_the_right_json_types_still_pass(demo_server):
    """An integer is a number (temperature 0, top_p 1); the strict types refuse nothing valid."""
    body = {"prompt": "hi", "max_tokens": 2, "temperature": 0, "top_p": 1, "presence_penalty": 0, "n": 1}
    status, answer = demo_server.request("POST", "/v1/completions", body)
    assert status == 200, answer
    assert answer["usage"]["completion_tokens"] == 2


def test_openapi_documents_the_extras(demo_server):
    status, schema = demo_server.request("GET", "/openapi.json")
    assert status == 200
    model = schema["paths"]["/v1/models/{model_id}"]
    assert model["get"]["parameters"][0]["schema"] == {"type": "string", "enum": [MODEL]}
    assert set(model["get"]["responses"]) == {"200", "404"}  # no 422: the route reads the id itself
    assert set(schema["paths"]["/health"]) == {"get", "head"}
    assert "content" not in schema["paths"]["/health"]["head"]["responses"]["200"]
    options = schema["components"]["schemas"]["StreamOptions"]["properties"]
    assert set(options) == {"include_usage", "continuous_usage_stats"}
    assert options["continuous_usage_stats"]["type"] == "boolean"
