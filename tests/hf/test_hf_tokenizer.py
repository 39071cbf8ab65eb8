"""Tokenizer encodes, decodes and names special tokens exactly as transformers does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hf_fixtures import SPECIAL_TOKENS, train_tokenizer, write_tokenizer_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forgellm.errors import ModelLoadError
from forgellm.hf import Tokenizer

TEXTS = [
    "",
    " ",
    "Hello, world!",
    "  leading and trailing spaces  \n\n\ttabs\r\n",
    "def add(a, b):\n    return a + b  # comment\n",
    "for (int i = 0; i < n; ++i) { total += values[i]; }",
    "Emoji 😀🎉🚀👩‍👩‍👧 and flags 🇫🇷",
    "你好，世界！今天天气很好。",
    "こんにちは、東京。한국어 텍스트. Привет мир. مرحبا",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<s>[INST] hello [/INST] answer</s>",
    "almost special: <|im_star|> <s > </ s> <|endoftext|><|endoftext|>",
    "\x00\x01 control \x7f bytes \u200b zero-width",
]


@pytest.fixture(scope="module")
def chatml(chatml_tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(chatml_tokenizer_dir)


@pytest.fixture(scope="module")
def llama(llama_tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(llama_tokenizer_dir)


@pytest.fixture(params=["chatml", "llama"])
def pair(request):
    """(ours, transformers') for each fixture tokenizer."""
    return request.getfixturevalue(request.param), request.getfixturevalue(f"hf_{request.param}_tokenizer")


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_encode_matches_transformers(pair, add_special_tokens):
    ours, reference = pair
    for text in TEXTS:
        expected = reference.encode(text, add_special_tokens=add_special_tokens)
        assert ours.encode(text, add_special_tokens=add_special_tokens) == expected, text


def test_long_texts_match_transformers_and_the_characters_per_token_bound_holds(pair):
    # Past 2,048 characters encode() goes through encode_batch(), which releases the GIL.
    ours, reference = pair
    for text in ["".join(TEXTS) * 40, "x" * 5000, "ab " * 3000]:
        ids = ours.encode(text, add_special_tokens=False)
        assert len(text) > 2048 and ids == reference.encode(text, add_special_tokens=False)
        # What admission relies on to refuse a text before tokenizing it.
        assert len(text) <= ours.max_chars_per_token * len(ids)


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_decode_matches_transformers(pair, skip_special_tokens):
    ours, reference = pair
    for text in TEXTS:
        ids = reference.encode(text)
        expected = reference.decode(ids, skip_special_tokens=skip_special_tokens)
        assert ours.decode(ids, skip_special_tokens=skip_special_tokens) == expected, text


def test_special_tokens_are_encoded_whole_and_skipped_on_decode(chatml):
    ids = chatml.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == chatml.token_to_id("<|im_start|>") and ids[-1] == chatml.eos_token_id
    assert chatml.decode(ids) == "user\nhi"
    assert chatml.decode(ids, skip_special_tokens=False) == "<|im_start|>user\nhi<|im_end|>"


def test_bos_post_processor(llama):
    ids = llama.encode("hi")
    assert ids[0] == llama.bos_token_id == llama.token_to_id("<s>")
    assert llama.encode("hi", add_special_tokens=False) == ids[1:]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_random_text_matches_transformers_and_round_trips(chatml, hf_chatml_tokenizer, text):
    ids = chatml.encode(text)
    assert ids == hf_chatml_tokenizer.encode(text)
    assert chatml.decode(ids, skip_special_tokens=False) == hf_chatml_tokenizer.decode(ids) == text


def test_vocabulary_and_special_token_ids(pair):
    ours, reference = pair
    assert ours.vocab_size == len(reference)
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(ours, name) == getattr(reference, name), name
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(ours, name) == getattr(reference, name), name
    assert set(reference.all_special_ids) <= ours.all_special_ids
    for token in SPECIAL_TOKENS:
        token_id = ours.token_to_id(token)
        assert token_id == reference.convert_tokens_to_ids(token) and token_id in ours.all_special_ids
        assert ours.id_to_token(token_id) == token
    assert ours.id_to_token(10**6) is None and ours.token_to_id("no such token") is None


def test_pad_token_missing_from_tokenizer_json_is_added(llama, hf_llama_tokenizer):
    # tokenizer_config.json names "<pad>", which tokenizer.json lacks: transformers appends it.
    assert llama.pad_token == "<pad>"
    assert llama.pad_token_id == 400 == llama.vocab_size - 1 == hf_llama_tokenizer.pad_token_id
    assert llama.encode("a<pad>", add_special_tokens=False)[-1] == 400


def test_chatml_special_token_values(chatml):
    assert chatml.bos_token is None and chatml.bos_token_id is None
    assert chatml.eos_token == "<|im_end|>"
    assert chatml.pad_token == "<|endoftext|>"  # given as an {"content": ...} dict


def test_saved_truncation_is_ignored(tmp_path, chatml):
    backend = train_tokenizer()
    backend.enable_truncation(max_length=4)
    tokenizer = Tokenizer.from_dir(write_tokenizer_dir(tmp_path, backend, {}))
    text = "a long sentence with many more than four tokens in it"
    assert len(tokenizer.encode(text)) > 4
    assert tokenizer.encode(text) == chatml.encode(text)


def test_special_tokens_map_json_is_read_in_the_legacy_layout(tmp_path):
    directory = write_tokenizer_dir(tmp_path, train_tokenizer(), {"eos_token": "<|endoftext|>"})
    (directory / "special_tokens_map.json").write_text(json.dumps({"eos_token": {"content": "</s>"}}))
    assert Tokenizer.from_dir(directory).eos_token == "</s>"


def test_clean_up_tokenization_spaces_matches_transformers_for_wordlevel(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers

    words = ["hello", ",", "world", "!", "it", "'", "s", "[UNK]"]
    backend = Backend(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    directory = write_tokenizer_dir(tmp_path, backend, {"clean_up_tokenization_spaces": True, "unk_token": "[UNK]"})
    reference = transformers.AutoTokenizer.from_pretrained(str(directory))
    ours = Tokenizer.from_dir(directory)
    ids = ours.encode("hello , world ! it 's")
    assert ids == reference.encode("hello , world ! it 's")
    assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True) == "hello, world! it's"


def test_missing_tokenizer_json(tmp_path):
    with pytest.raises(ModelLoadError, match="tokenizer.json not found: .* sentencepiece-only tokenizer.model"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"\x00")
    with pytest.raises(ModelLoadError, match=r"not found \(there is a tokenizer.model\)"):
        Tokenizer.from_dir(tmp_path)


def test_bad_tokenizer_files(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)
    write_tokenizer_dir(tmp_path, train_tokenizer(), {})
    (tmp_path / "tokenizer_config.json").write_text("{oops")
    with pytest.raises(ModelLoadError, match="tokenizer_config.json is not valid JSON"):
        Tokenizer.from_dir(tmp_path)
