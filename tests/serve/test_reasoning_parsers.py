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
