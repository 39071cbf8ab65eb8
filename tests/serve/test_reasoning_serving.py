"""--reasoning-parser qwen3 through the server: <think>...</think> arrives as reasoning_content, the rest as
content, whole and streamed (the demo does not reason, so a structural tag makes it write the tags);
response_format applies after the reasoning; chat_template_kwargs reach the template, not its own fields."""

from __future__ import annotations

import json
import re

import pytest

from forgellm.serve.settings import ServerSettings
from tests.serve.test_errors import assert_error, assert_still_serves

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
    # A structural tag describes the whole output (the thinking too): it makes the demo, which does not reason,
    # write the tags. Other constraints apply after the reasoning.
    forced = {
        "structured_outputs": {
            "structural_tag": {"type": "structural_tag", "format": {"type": "regex", "pattern": THINKING}}
        }
    }
    whole = client.chat.completions.create(**params, extra_body=forced).choices[0].message
    reasoning = whole.model_extra["reasoning_content"]
    assert re.fullmatch(r"[a-z]{1,8}( [a-z]{1,8}){0,3}", reasoning) and re.fullmatch(
        r"[A-Z][a-z]{1,8}\.", whole.content
    )
    chunks = list(client.chat.completions.create(**params, stream=True, extra_body=forced))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == reasoning
    assert "".join(d.content or "" for d in deltas) == whole.content
    assert_still_serves(reasoning_server)


def test_chat_template_kwargs_reach_the_template_but_not_its_own_fields(reasoning_server):
    client = reasoning_server.client()
    out = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=4, extra_body={"chat_template_kwargs": {"enable_thinking": False}}
    )
    assert out.choices[0].message.content is not None
    body = {"model": MODEL, "messages": QUESTION, "chat_template_kwargs": {"tools": []}}
    assert_error(reasoning_server.request("POST", "/v1/chat/completions", body), 400, "chat_template_kwargs", "tools")
    assert_still_serves(reasoning_server)


def test_a_constraint_applies_after_the_reasoning(reasoning_server):
    """With a reasoning parser, response_format constrains the answer, not the thinking: the grammar admits a
    <think> block first (checked on the grammar itself in test_reasoning_parsers.py). The demo never closes
    one, so here "<" is banned and it answers at once; the answer is still the schema's."""
    client = reasoning_server.client()
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    status, tokens = reasoning_server.request("POST", "/tokenize", {"prompt": "<", "add_special_tokens": False})
    out = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=60, temperature=0, logit_bias={str(tokens["tokens"][0]): -100},
        response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}},
    )  # fmt: skip
    assert out.choices[0].finish_reason == "stop"
    assert json.loads(out.choices[0].message.content) in ({"ok": True}, {"ok": False})
    assert_still_serves(reasoning_server)
