"""Reasoning parsers: <think>...</think> split into reasoning_content and content, the same whether the text
comes whole or in any pieces (streamed)."""

from __future__ import annotations

import random

import pytest

from forgellm.serve.reasoning_parsers import REASONING_PARSERS

TEXTS = [
    "<think>\nLet me add 2 and 3.\n</think>\n\nThe answer is 5.",
    "<think>short</think>Answer.",
    "No reasoning at all <think> in the middle </think> stays content.",
    "<think>never closed because max_tokens",
    "Reasoning opened by the prompt.</think>\nDone.",
    "",
    "<thin",
]


@pytest.mark.parametrize("name", sorted(REASONING_PARSERS))
def test_whole_outputs_split(name: str):
    parser = REASONING_PARSERS[name]
    assert parser.split(TEXTS[0]) == ("\nLet me add 2 and 3.\n", "The answer is 5.")
    assert parser.split(TEXTS[3]) == ("never closed because max_tokens", "")
    if name == "qwen3":  # without the opening tag there is no reasoning
        assert parser.split(TEXTS[2]) == (None, TEXTS[2])
        assert parser.split(TEXTS[4]) == (None, TEXTS[4])
    else:  # the template opened it: text up to </think> is reasoning
        assert parser.split(TEXTS[4]) == ("Reasoning opened by the prompt.", "Done.")


@pytest.mark.parametrize("name", sorted(REASONING_PARSERS))
def test_streaming_in_any_pieces_gives_the_same_split(name: str):
    parser = REASONING_PARSERS[name]
    rng = random.Random(0)
    for text in TEXTS:
        reasoning, content = parser.split(text)
        for _ in range(50):
            cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 6))))
            pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
            stream = parser.streamer()
            sent = [stream.feed(piece) for piece in pieces] + [stream.finish()]
            assert "".join(r for r, _ in sent) == (reasoning or ""), (text, pieces)
            assert "".join(c for _, c in sent) == content, (text, pieces)


@pytest.mark.parametrize("name", sorted(REASONING_PARSERS))
def test_the_answer_grammar_admits_reasoning_first(name: str):
    xgr = pytest.importorskip("xgrammar")
    import json

    from forgellm.serve.output_constraints import after_reasoning
    from forgellm.serve.tool_parsers.hermes import HermesToolParser
    from forgellm.serve.tools import ToolCalling

    parser = REASONING_PARSERS[name]
    vocab = [chr(c) for c in range(32, 127)] + ["\n", "</s>"]
    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, stop_token_ids=[len(vocab) - 1]))
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    call = ToolCalling(HermesToolParser(), [tool], "required", parallel=False).constraint()  # a forced tool call
    cases = [
        ({"json": schema}, '{"a": 1}'),
        ({"regex": "[0-9]{3}"}, "123"),
        ({"choice": ["no"]}, "no"),
        (call, '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>'),
    ]
    for constraint, answer in cases:
        tag = after_reasoning(constraint, parser.start, parser.end, parser.opened_by_prompt)["structural_tag"]
        grammar = compiler.compile_structural_tag(json.dumps(tag))

        def accepts(text: str) -> bool:
            matcher = xgr.GrammarMatcher(grammar)  # noqa: B023 - used at once
            return matcher.accept_string(text) and matcher.is_completed()

        thought = ("" if parser.opened_by_prompt else "<think>") + "any {text} here</think>"
        assert accepts(thought + answer) and not accepts(thought + "nope")
        assert accepts(answer) != parser.opened_by_prompt  # without the tag only where the template did not open it
