"""IncrementalDetokenizer: the deltas add up to the full decode, on a byte-level BPE trained here."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from forgellm.engine.detokenizer import IncrementalDetokenizer

CORPUS = [
    "The café on the Straße serves crème brûlée and jalapeño piñatas. Ærøskøbing, Zürich, Łódź.",
    "東京の天気は晴れです。我喜欢学习中文，因为汉字很有意思。한국어도 재미있어요.",
    "Emoji time: 🚀🔥✨ 👩‍💻 loves 🐍 and 🦀! Flags 🇫🇷🇯🇵, faces 😀😂🥲, hands 👍🏽.",
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    'for (int i = 0; i < 10; ++i) { printf("%d\\n", i); }  // C code → ∑ λx. x² ≤ ∞',
    "Ελληνικά και русский язык, עברית ו-العربية, हिन्दी भाषा.",
]
EOS = "<|eos|>"


class Decoder:
    """Adapts a `tokenizers.Tokenizer` to the duck type the detokenizer expects, recording calls."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.longest_call = 0

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        self.longest_call = max(self.longest_call, len(ids))
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    return tok


def byte_token(tok: Tokenizer, byte: int) -> int:
    """The id of the single-byte token for `byte` (GPT-2's printable byte-to-character mapping)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    if byte in printable:
        char = chr(byte)
    else:
        char = chr(256 + [b for b in range(256) if b not in printable].index(byte))
    return tok.token_to_id(char)


def stream(detok: IncrementalDetokenizer, ids: list[int], chunks: list[int]) -> list[str]:
    """Feed `ids` in chunks of the given sizes (cycled), then flush; returns every delta."""
    deltas, start, i = [], 0, 0
    while start < len(ids):
        size = chunks[i % len(chunks)]
        deltas.append(detok.update(ids[start : start + size]))
        start, i = start + size, i + 1
    deltas.append(detok.flush())
    return deltas


@pytest.mark.parametrize("chunks", [[1], [2, 1, 3], [7]])
def test_real_encodings_stream_to_the_full_decode(tokenizer: Tokenizer, chunks: list[int]) -> None:
    for text in CORPUS + ["".join(CORPUS)]:
        ids = tokenizer.encode(text).ids
        for split in (0, 1, len(ids) // 3, len(ids) // 2):
            prompt, output = ids[:split], ids[split:]
            detok = IncrementalDetokenizer(Decoder(tokenizer), prompt)
            deltas = stream(detok, output, chunks)
            assert "".join(deltas) == tokenizer.decode(output) == detok.text
            assert deltas[-1] == ""  # real text ends on a whole character: nothing was held back


@settings(max_examples=150, deadline=None)
@given(
    prompt_seed=st.integers(0, 2**32 - 1),
    output_len=st.integers(0, 40),
    skip=st.booleans(),
    chunks=st.lists(st.integers(1, 4), min_size=1, max_size=4),
)
def test_random_tokens_stream_to_the_full_decode(
    tokenizer: Tokenizer, prompt_seed: int, output_len: int, skip: bool, chunks: list[int]
) -> None:
    rng = random.Random(prompt_seed)
    vocab = tokenizer.get_vocab_size()
    prompt = [rng.randrange(vocab) for _ in range(rng.randrange(8))]
    output = [rng.randrange(vocab) for _ in range(output_len)]
    detok = IncrementalDetokenizer(Decoder(tokenizer), prompt, skip_special_tokens=skip)
    final = tokenizer.decode(output, skip_special_tokens=skip)
    deltas = stream(detok, output, chunks)
    assert "".join(deltas) == final == detok.text
    assert all(final.startswith("".join(deltas[:i])) for i in range(len(deltas)))  # never retracted
    assert detok.num_output_tokens == len(output)


def test_incomplete_character_is_held_back(tokenizer: Tokenizer) -> None:
    first, second, third = (byte_token(tokenizer, b) for b in "中".encode())
    detok = IncrementalDetokenizer(Decoder(tokenizer), tokenizer.encode("Say:").ids)
    assert detok.update([first]) == ""
    assert detok.update([second]) == ""
    assert detok.update([third]) == "中"
    assert detok.update([byte_token(tokenizer, ord("!"))]) == "!"
    assert detok.text == "中!"


def test_flush_emits_a_dangling_partial_character(tokenizer: Tokenizer) -> None:
    detok = IncrementalDetokenizer(Decoder(tokenizer), [])
    assert detok.update([byte_token(tokenizer, ord("a")), byte_token(tokenizer, 0xE4)]) == ""
    assert detok.flush() == "a\ufffd"


def test_prompt_ending_inside_a_character_does_not_leak_into_the_output(tokenizer: Tokenizer) -> None:
    first, second, third = (byte_token(tokenizer, b) for b in "中".encode())
    detok = IncrementalDetokenizer(Decoder(tokenizer), [byte_token(tokenizer, ord("x")), first])
    deltas = stream(detok, [second, third, byte_token(tokenizer, ord("y"))], [1])
    assert "".join(deltas) == tokenizer.decode([second, third, byte_token(tokenizer, ord("y"))])


def test_special_tokens_skipped_or_kept(tokenizer: Tokenizer) -> None:
    eos = tokenizer.token_to_id(EOS)
    hello = tokenizer.encode("Hello").ids
    assert "".join(stream(IncrementalDetokenizer(Decoder(tokenizer), []), [*hello, eos], [1])) == "Hello"
    kept = IncrementalDetokenizer(Decoder(tokenizer), [], skip_special_tokens=False)
    assert "".join(stream(kept, [*hello, eos], [1])) == "Hello" + EOS


def test_decode_window_stays_short(tokenizer: Tokenizer) -> None:
    decoder = Decoder(tokenizer)
    ids = tokenizer.encode("".join(CORPUS) * 4).ids
    detok = IncrementalDetokenizer(decoder, ids[:50])
    stream(detok, ids, [1])
    assert decoder.longest_call <= 12  # a few tokens per call, however long the output


class LeadingSpaceTokenizer:
    """A SentencePiece-like toy: '▁' is a space, and a leading space is dropped from the result."""

    PIECES = ["▁Hello", "▁world", "!", "▁again"]

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        text = "".join(self.PIECES[i] for i in ids).replace("▁", " ")
        return text[1:] if text.startswith(" ") else text


def test_prompt_context_keeps_the_leading_space() -> None:
    with_prompt = IncrementalDetokenizer(LeadingSpaceTokenizer(), [0])
    assert [with_prompt.update([i]) for i in (1, 2, 3)] == [" world", "!", " again"]
    no_prompt = IncrementalDetokenizer(LeadingSpaceTokenizer(), [])
    assert [no_prompt.update([i]) for i in (1, 2, 3)] == ["world", "!", " again"]
