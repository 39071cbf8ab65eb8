"""/v1/responses (OpenAI's Responses API) through the official `openai` client, and LangChain."""

from __future__ import annotations

import json
import socket

import openai
import pytest

from forgellm.serve.app import build_app
from forgellm.serve.response_store import ResponseStore
from tests.serve.conftest import metric_value

MODEL = "forgellm-demo"
EVENT_ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


def _chat(client, messages, max_tokens):
    """The chat completions answer for the same conversation: what a response must equal."""
    return client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens, temperature=0)


def test_string_input_matches_chat_completions(demo_server):
    client = demo_server.client()
    response = client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=8, temperature=0)
    chat = _chat(client, [{"role": "user", "content": "Say hello."}], 8)
    assert response.output_text == chat.choices[0].message.content
    assert response.id.startswith("resp_") and response.object == "response" and response.model == MODEL
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.output_tokens == chat.usage.completion_tokens
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    if chat.choices[0].finish_reason == "length":
        assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    else:
        assert response.status == "completed" and response.incomplete_details is None


def test_instructions_and_message_items_render_as_chat(demo_server):
    client = demo_server.client()
    items = [
        {"role": "user", "content": "Name a color."},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Blue."}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Another one."}]},
    ]
    response = client.responses.create(
        model=MODEL, instructions="You are terse.", input=items, max_output_tokens=6, temperature=0
    )
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one."},
    ]
    chat = _chat(client, messages, 6)
    assert response.output_text == chat.choices[0].message.content
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.instructions == "You are terse."


def test_stream_events_in_order_and_deltas_join_to_the_answer(demo_server):
    client = demo_server.client()
    args = dict(model=MODEL, input="Count to five.", max_output_tokens=6, temperature=0)
    events = list(client.responses.create(stream=True, **args))
    types = [e.type for e in events]
    collapsed = [t for i, t in enumerate(types) if i == 0 or t != types[i - 1]]  # many deltas -> one
    assert collapsed[:-1] == EVENT_ORDER and collapsed[-1] in ("response.completed", "response.incomplete")
    assert types.count("response.output_text.delta") >= 2
    numbers = [e.sequence_number for e in events]
    assert numbers == list(range(len(events)))
    final = events[-1].response
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == final.output_text == next(e.text for e in events if e.type == "response.output_text.done")
    assert final.usage.output_tokens == 6 or final.status == "completed"
    assert events[0].response.status == "in_progress" and events[0].response.id == final.id
    assert text == client.responses.create(**args).output_text  # streamed and not agree
    assert demo_server.wait_until(demo_server.is_idle)


def test_previous_response_id_continues_the_conversation(demo_server):
    client = demo_server.client()
    first = client.responses.create(model=MODEL, input="My name is Ada.", max_output_tokens=5, temperature=0)
    second = client.responses.create(
        model=MODEL, input="What is my name?", previous_response_id=first.id, max_output_tokens=5, temperature=0
    )
    messages = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "What is my name?"},
    ]
    chat = _chat(client, messages, 5)
    assert second.usage.input_tokens == chat.usage.prompt_tokens  # the first exchange is in the prompt
    assert second.output_text == chat.choices[0].message.content
    assert second.previous_response_id == first.id
    # A streamed response is stored too, and store: false keeps nothing.
    streamed = list(client.responses.create(model=MODEL, input="Hi.", max_output_tokens=1, stream=True))
    again = streamed[-1].response.id
    client.responses.create(model=MODEL, input="Again.", previous_response_id=again, max_output_tokens=1)
    unstored = client.responses.create(model=MODEL, input="Hi.", max_output_tokens=1, store=False)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input="x", previous_response_id=unstored.id, max_output_tokens=1)
    assert unstored.id in caught.value.message and caught.value.body["param"] == "previous_response_id"


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"previous_response_id": "resp_unknown"}, "previous_response_id"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"max_output_tokens": -1}, "max_output_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"stream": "true"}, "stream"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"input": []}, "input"),
        ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
        ({"text": {"format": {"type": "xml"}}}, "text.format"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "nonsense"}}}}, "text.format"),
        ({"model": "gpt-unknown"}, "model"),
    ],
)
def test_bad_values_are_refused_by_name_and_the_server_serves_on(demo_server, extra, param):
    body = {"model": MODEL, "input": "Hello", "max_output_tokens": 2, **extra}
    status, answer = demo_server.request("POST", "/v1/responses", body)
    assert status in (400, 404), answer
    assert answer["error"]["param"] == param, answer
    if param == "previous_response_id":
        assert "resp_unknown" in answer["error"]["message"]
    if param == "tools":
        assert "/v1/chat/completions" in answer["error"]["message"]
    ok = demo_server.client().responses.create(model=MODEL, input="Hello", max_output_tokens=1)
    assert ok.status in ("completed", "incomplete") and ok.usage.output_tokens == 1


ABORTS = ("forgellm_request_finished_total", '{finish_reason="abort"}')


@pytest.fixture(scope="module")
def slow_prefill(server_factory):
    # 8 prompt tokens per step: a prompt of some 500 tokens is prefilled for seconds, time to leave.
    return server_factory(max_num_batched_tokens=8, enable_prefix_caching=False)


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "non-streaming"])
def test_client_leaving_mid_prefill_aborts_the_request(slow_prefill, stream):
    server = slow_prefill
    aborts = metric_value(server.metrics(), *ABORTS)
    data = json.dumps({"model": MODEL, "input": "word " * 500, "max_output_tokens": 4, "stream": stream}).encode()
    head = f"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n"
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        sock.sendall(head.encode() + data)
        assert server.wait_until(lambda: server.engine.stats().num_running == 1)
    finally:
        sock.close()
    assert server.wait_until(server.is_idle), server.engine.stats()
    assert metric_value(server.metrics(), *ABORTS) == aborts + 1


def test_openapi_documents_the_route():
    raw = build_app(engine=None).openapi()  # type: ignore[arg-type]
    operation = raw["paths"]["/v1/responses"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/ResponsesRequest"}
    assert raw["components"]["schemas"]["ResponsesRequest"]["additionalProperties"] is False
    assert set(operation["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert {"400", "404", "413", "429", "500", "503"} <= set(operation["responses"])


def test_store_is_bounded_in_count_and_age():
    now = [0.0]
    store = ResponseStore(max_entries=2, ttl_s=10, clock=lambda: now[0])
    for i in range(3):
        store.put(f"r{i}", [{"role": "user", "content": str(i)}])
    assert store.get("r0") is None and store.get("r2") == [{"role": "user", "content": "2"}]
    now[0] = 10.5
    assert store.get("r1") is None and len(store) == 0


def test_langchain_chat_openai_with_the_responses_api(demo_server):
    model = demo_server.langchain(use_responses_api=True, max_tokens=4)
    message = model.invoke("hi")
    expected = _chat(demo_server.client(), [{"role": "user", "content": "hi"}], 4).choices[0].message.content
    assert message.text == expected
    assert message.usage_metadata["output_tokens"] <= 4
    chunks = list(model.stream("hi"))  # the typed events, parsed by langchain-openai
    assert "".join(c.text for c in chunks) == expected
