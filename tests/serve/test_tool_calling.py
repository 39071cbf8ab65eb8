"""Tool calling through the server (the demo's chat template renders tools Hermes style): tool_choice
"required" and a named function are enforced by a grammar, so even the tiny demo calls the tool with
arguments valid for its schema; calls come back as OpenAI tool_calls, whole or streamed (reassembled by the
openai client's own stream helper); a conversation with calls and tool results renders; LangChain's
bind_tools works; bad tool requests are 400s naming the field, each followed by a normal request."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest

from tests.serve.test_errors import assert_error, assert_still_serves

pytest.importorskip("xgrammar")

MODEL = "forgellm-demo"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99}, "b": {"type": "integer"}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def check_call(call, tool: dict) -> None:  # noqa: ANN001
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == tool["function"]["name"]
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])


def test_required_and_named_tool_choice_are_enforced(demo_server):
    client = demo_server.client()
    for seed in range(3):
        out = client.chat.completions.create(
            model=MODEL, messages=QUESTION, tools=[WEATHER], tool_choice="required", max_tokens=80,
            temperature=1.0, seed=seed, parallel_tool_calls=False,
        )  # fmt: skip
        choice = out.choices[0]
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
        check_call(choice.message.tool_calls[0], WEATHER)
    named = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[WEATHER, ADD], max_tokens=80, temperature=1.0, seed=1,
        tool_choice={"type": "function", "function": {"name": "add"}},
    )  # fmt: skip
    assert [c.function.name for c in named.choices[0].message.tool_calls] == ["add"]
    check_call(named.choices[0].message.tool_calls[0], ADD)
    assert_still_serves(demo_server)


def test_streamed_tool_calls_reassemble_with_the_clients_helper(demo_server):
    client = demo_server.client()
    with client.chat.completions.stream(
        model=MODEL, messages=QUESTION, tools=[WEATHER], tool_choice="required", max_tokens=80, temperature=0,
        parallel_tool_calls=False,
    ) as stream:  # fmt: skip
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    check_call(choice.message.tool_calls[0], WEATHER)
    whole = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[WEATHER], tool_choice="required", max_tokens=80, temperature=0,
        parallel_tool_calls=False,
    )  # fmt: skip
    assert whole.choices[0].message.tool_calls[0].function.arguments == choice.message.tool_calls[0].function.arguments
    assert_still_serves(demo_server)


def test_a_conversation_with_calls_and_tool_results(demo_server):
    client = demo_server.client()
    first = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[WEATHER], tool_choice="required", max_tokens=80, temperature=0
    )
    message = first.choices[0].message
    history = QUESTION + [
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "sunny, 21 C"},
    ]
    answer = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], max_tokens=16)
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
    none = client.chat.completions.create(
        model=MODEL, messages=history, tools=[WEATHER], tool_choice="none", max_tokens=8, temperature=0
    )
    assert none.choices[0].message.tool_calls is None
    assert_still_serves(demo_server)


def test_langchain_bind_tools(demo_server):
    model = demo_server.langchain(max_tokens=80)
    reply = model.bind_tools([WEATHER], tool_choice="get_weather").invoke("Weather in Rome?")
    assert [call["name"] for call in reply.tool_calls] == ["get_weather"]
    jsonschema.validate(reply.tool_calls[0]["args"], WEATHER["function"]["parameters"])
    assert_still_serves(demo_server)


BAD = [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "nope"),
    ({"tool_choice": "required"}, "tool_choice", "no tools"),
    ({"tools": [{"type": "function", "function": {"description": "x"}}]}, "tools.0.function.name", "name"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice", "required"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice",
     "response_format"),
    ({"messages": [{"role": "assistant", "content": "", "tool_calls": [{"type": "function",
                                                                        "function": {"name": "f"}}]}]},
     "messages.0.tool_calls.0", "arguments"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "param", "words"), BAD)
def test_bad_tool_requests_are_400s_naming_the_field(demo_server, extra, param, words):
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 4} | extra
    assert_error(demo_server.request("POST", "/v1/chat/completions", body), 400, param, words)
    assert_still_serves(demo_server)


def test_tools_for_a_template_that_ignores_them_are_refused(tiny_model_dir, tmp_path):
    """A chat template that shows no tools: sending tools is an error naming them, not silence, for the
    server's engine and for LLM.chat alike (the check lives in Tokenizer.apply_chat_template)."""
    from forgellm import LLM
    from forgellm.engine.async_engine import AsyncLLM
    from forgellm.errors import InvalidRequestError
    from tests.fixtures.tool_chat_templates import with_chat_template

    chatml = (  # ChatML without tools
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    model = with_chat_template(tiny_model_dir("llama"), tmp_path / "model", chatml)
    engine = AsyncLLM(model=str(model), dtype="float32", max_model_len=256, cpu_kv_cache_gb=0.05)
    try:
        with pytest.raises(InvalidRequestError, match="does not show tools") as err:
            asyncio.run(engine.render_chat(QUESTION, tools=[WEATHER]))
        assert err.value.param == "tools"
        assert asyncio.run(engine.render_chat(QUESTION))  # without tools it renders
    finally:
        engine.shutdown()
    llm = LLM(str(model), dtype="float32", device="cpu", max_model_len=256)
    with pytest.raises(InvalidRequestError, match="does not show tools"):
        llm.chat(QUESTION, tools=[WEATHER], use_tqdm=False)


@pytest.mark.parametrize("parser", ["llama3_json", "mistral"])
def test_each_parser_end_to_end_with_its_familys_template(server_factory, tmp_path, parser):
    """A server with --tool-call-parser and a model whose chat template shows tools as that family does: a
    required call comes back parsed, whole and streamed, and a conversation with it renders."""
    from forgellm.engine.llm_engine import DEMO_MODEL_DIR
    from forgellm.serve.settings import ServerSettings
    from tests.fixtures.tool_chat_templates import TEMPLATES, with_chat_template

    model = with_chat_template(DEMO_MODEL_DIR, tmp_path / parser, TEMPLATES[parser])
    server = server_factory(ServerSettings(tool_call_parser=parser), model=str(model))
    client = server.client()
    name = client.models.list().data[0].id
    request = {"model": name, "messages": QUESTION, "tools": [WEATHER, ADD], "max_tokens": 300, "temperature": 1.0}
    for parallel in (False, True):
        out = client.chat.completions.create(**request, tool_choice="required", seed=2, parallel_tool_calls=parallel)
        calls = out.choices[0].message.tool_calls
        assert out.choices[0].finish_reason == "tool_calls" and calls, out.choices[0]
        for call in calls:
            check_call(call, {"get_weather": WEATHER, "add": ADD}[call.function.name])
    named = {"type": "function", "function": {"name": "get_weather"}}
    with client.chat.completions.stream(**request, tool_choice=named, parallel_tool_calls=False) as stream:
        final = stream.get_final_completion()
    check_call(final.choices[0].message.tool_calls[0], WEATHER)
    history = QUESTION + [
        final.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": final.choices[0].message.tool_calls[0].id, "content": "sunny"},
    ]
    assert client.chat.completions.create(model=name, messages=history, tools=[WEATHER], max_tokens=4).choices
