"""Tool-call parsers: each family's syntax read back into calls, text that is not a call left as content, and
the structural tag that forces a call accepting exactly that syntax (checked with xgrammar's own matcher)."""

from __future__ import annotations

import json

import pytest

from forgellm.serve.tool_parsers import TOOL_PARSERS
from forgellm.serve.tools import ToolCalling

xgr = pytest.importorskip("xgrammar")

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
        "additionalProperties": False}}},
    {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}}},
]  # fmt: skip
CALLS = {
    "hermes": 'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "add", "arguments": {"a": 2}}\n</tool_call>',
    "llama3_json": '{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "add", "parameters": {"a": 2}}',
    "mistral": 'Let me check.[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, '
    '{"name": "add", "arguments": {"a": 2}}]',
}
FORCED = {  # what the forcing grammar must accept: the calls alone, as each family writes them
    "hermes": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    '<tool_call>\n{"name": "add", "arguments": {"a": 2}}\n</tool_call>',
    "llama3_json": CALLS["llama3_json"],
    "mistral": '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, '
    '{"name": "add", "arguments": {"a": 2}}]',
}


@pytest.mark.parametrize("name", sorted(TOOL_PARSERS))
def test_calls_are_read_back(name: str):
    content, calls = TOOL_PARSERS[name]().extract(CALLS[name])
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"}), ("add", {"a": 2})]
    assert content == (None if name == "llama3_json" else "Let me check.")
    assert TOOL_PARSERS[name]().extract("no call here, {just braces}") == ("no call here, {just braces}", [])


@pytest.fixture(scope="module")
def compiler():  # noqa: ANN201
    vocab = [chr(c) for c in range(32, 127)] + ["\n", "</s>"]
    info = xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, stop_token_ids=[len(vocab) - 1])
    return xgr.GrammarCompiler(info)


@pytest.mark.parametrize("name", sorted(TOOL_PARSERS))
def test_the_forcing_grammar_takes_the_familys_calls_and_nothing_else(name: str, compiler):
    parser = TOOL_PARSERS[name]()
    tag = ToolCalling(parser, TOOLS, "required", parallel=True).constraint()["structural_tag"]
    matcher = xgr.GrammarMatcher(compiler.compile_structural_tag(json.dumps(tag)))
    assert matcher.accept_string(FORCED[name]) and matcher.is_completed()
    wrong_args = xgr.GrammarMatcher(compiler.compile_structural_tag(json.dumps(tag)))
    assert not wrong_args.accept_string(FORCED[name].replace('"city": "Paris"', '"town": "Paris"'))
    named = ToolCalling(parser, TOOLS, {"type": "function", "function": {"name": "add"}}).constraint()
    only_add = xgr.GrammarMatcher(compiler.compile_structural_tag(json.dumps(named["structural_tag"])))
    assert not only_add.accept_string(FORCED[name])  # it begins with get_weather
    assert ToolCalling(parser, TOOLS, "auto").constraint() is None


def test_streaming_holds_back_from_where_a_call_may_begin():
    stream = ToolCalling(TOOL_PARSERS["hermes"](), TOOLS).streamer()
    pieces = ["Let me ", "check.<tool", '_call>\n{"name": "add", "arguments": {"a": 2}}\n</tool_call>']
    assert [stream.feed(piece) for piece in pieces] == ["Let me ", "check.", ""]
    rest, deltas, reason = stream.finish("stop")
    assert rest == "" and reason == "tool_calls"
    assert [(d["index"], d["function"]["name"]) for d in deltas] == [(0, "add")]
    plain = ToolCalling(TOOL_PARSERS["hermes"](), TOOLS).streamer()
    assert plain.feed("a <b") == "a <b" and plain.feed(" <tool") == " "
    assert plain.finish("stop") == ("<tool", [], "stop")
