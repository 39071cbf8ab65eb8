"""Structured output through the server with the clients people use: the openai client's `parse` with a
Pydantic model (response_format json_schema), vLLM's guided_* fields and structured_outputs object, and
LangChain's with_structured_output; every output validated by `jsonschema`; bad constraints are 400s naming
the field they came in, each followed by a normal request."""

from __future__ import annotations

import json
import re

import jsonschema
import pydantic
import pytest

from tests.serve.test_errors import assert_error, assert_still_serves

pytest.importorskip("xgrammar")

MODEL = "forgellm-demo"
QUESTION = [{"role": "user", "content": "Describe a city as JSON."}]


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=12)
    population: int = pydantic.Field(ge=0, le=10_000_000)
    coastal: bool


def test_openai_parse_with_a_pydantic_model(demo_server):
    client = demo_server.client()
    for seed in range(3):
        completion = client.chat.completions.parse(
            model=MODEL, messages=QUESTION, response_format=City, max_tokens=200, temperature=1.0, seed=seed
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        city = choice.message.parsed
        assert isinstance(city, City)
        jsonschema.validate(json.loads(choice.message.content), City.model_json_schema())
    assert_still_serves(demo_server)


def test_vllm_guided_fields_and_structured_outputs(demo_server):
    client = demo_server.client()
    choice = client.completions.create(
        model=MODEL, prompt="Colour:", max_tokens=12, temperature=1.0, n=4, seed=3,
        extra_body={"guided_choice": ["red", "green", "blue"]},
    )  # fmt: skip
    assert {c.text for c in choice.choices} <= {"red", "green", "blue"}
    phone = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=20,
        temperature=1.0,
        extra_body={"guided_regex": r"[0-9]{3}-[0-9]{4}"},
    )
    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", phone.choices[0].message.content)
    schema = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 2, "maxItems": 3}
    for extra in ({"guided_json": schema}, {"structured_outputs": {"json": schema, "disable_any_whitespace": True}}):
        out = client.completions.create(model=MODEL, prompt="Digits:", max_tokens=40, temperature=1.0, extra_body=extra)
        assert out.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(out.choices[0].text), schema)
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=12, stream=True, extra_body={"guided_choice": ["sunny", "rainy"]}
        )
        if chunk.choices
    )
    assert streamed in {"sunny", "rainy"}
    assert_still_serves(demo_server)


def test_langchain_with_structured_output(demo_server):
    city = demo_server.langchain(max_tokens=200).with_structured_output(City).invoke("Describe a city.")
    assert isinstance(city, City)
    responses = demo_server.langchain(max_tokens=200, use_responses_api=True)
    assert isinstance(responses.with_structured_output(City).invoke("Describe a city."), City)
    assert_still_serves(demo_server)


BAD = [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     "response_format", "does not compile"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format", "schema"),
    ({"response_format": {"type": "xml"}}, "response_format", "json_object"),
    ({"guided_regex": "(unclosed"}, "guided_regex", "does not compile"),
    ({"guided_grammar": "root ::= nowhere"}, "guided_grammar", "does not compile"),
    ({"guided_choice": ["a"], "guided_regex": "b"}, "guided_choice", "at most one"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs", "exactly one"),
    ({"response_format": {"type": "json_object"}, "guided_json": {"type": "object"}}, "guided_json", "at most one"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "param", "words"), BAD)
def test_bad_constraints_are_400s_naming_their_field(demo_server, extra, param, words):
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 4} | extra
    assert_error(demo_server.request("POST", "/v1/chat/completions", body), 400, param, words)
    assert_still_serves(demo_server)


def test_responses_api_text_format_with_the_openai_parse_helper(demo_server):
    """/v1/responses: text.format json_schema (written flat, as the Responses API does) through the openai
    client's responses.parse with a Pydantic model."""
    client = demo_server.client()
    parsed = client.responses.parse(
        model=MODEL, input="Describe a city as JSON.", text_format=City, max_output_tokens=200, temperature=1.0
    )
    assert isinstance(parsed.output_parsed, City)
    assert parsed.text.format.type == "json_schema"
    assert_still_serves(demo_server)
