"""--reasoning-parser qwen3 through the server: <think>...</think> arrives as reasoning_content, the rest as
content, whole and streamed (the demo does not reason, so a regex makes it write the tags); reasoning and a
forced tool call together; chat_template_kwargs reach the template, except the request's own fields."""

from __future__ import annotations

import re

import pytest

from forgellm.serve.settings import ServerSettings
from tests.serve.test_errors import assert_error, assert_still_serves
from tests.serve.test_tool_calling import WEATHER, check_call

pytest.importorskip("xgrammar")

MODEL = "forgellm-demo"
QUESTION = [{"role": "user", "content": "Think, then answer."}]
THINKING = r"<think>[a-z]{1,8}( [a-z]{1,8}){0,3}</think>\n[A-Z][a-z]{1,8}\."


@pytest.fixture(scope="module")
def reasoning_server(server_factory):  # noqa: ANN201
    return server_factory(ServerSettings(reasoning_parser="qwen3"))


def test_reasoning_content_whole_and_streamed(reasoning_server):
    client = reasoning_server.client()
    params = {"model": MODEL, "messages": QUESTION, "max_tokens": 60, "temperature": 0}
    whole = client.chat.completions.create(**params, extra_body={"guided_regex": THINKING}).choices[0].message
    reasoning = whole.model_extra["reasoning_content"]
    assert re.fullmatch(r"[a-z]{1,8}( [a-z]{1,8}){0,3}", reasoning) and re.fullmatch(
        r"[A-Z][a-z]{1,8}\.", whole.content
    )
    chunks = list(client.chat.completions.create(**params, stream=True, extra_body={"guided_regex": THINKING}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == reasoning
    assert "".join(d.content or "" for d in deltas) == whole.content
    assert_still_serves(reasoning_server)


def test_tool_calls_after_reasoning_and_template_kwargs(reasoning_server):
    client = reasoning_server.client()
    out = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[WEATHER], tool_choice="required", max_tokens=80, temperature=0,
        parallel_tool_calls=False, extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )  # fmt: skip
    message = out.choices[0].message
    check_call(message.tool_calls[0], WEATHER)
    assert message.model_extra.get("reasoning_content") is None  # nothing was thought
    body = {"model": MODEL, "messages": QUESTION, "chat_template_kwargs": {"tools": []}}
    assert_error(reasoning_server.request("POST", "/v1/chat/completions", body), 400, "chat_template_kwargs", "tools")
    assert_still_serves(reasoning_server)
