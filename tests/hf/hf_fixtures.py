"""Helpers for tests/hf: a tiny byte-level BPE tokenizer trained here, never downloaded."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 42 degrees; isn't that hot?",
    "def add(a, b):\n    return a + b  # adds two numbers\n\nprint(add(1, 2))",
    "for (int i = 0; i < n; ++i) { total += values[i]; }",
    "你好，世界！今天天气很好。我们去公园散步吧。",
    "こんにちは、元気ですか？ 東京は雨です。",
    "Emoji time: 😀🎉🚀 — café naïve résumé Ünïcödé",
    "Hello, how are you? I am fine, thank you. What about you?",
    '{"name": "forgellm", "version": 1, "tags": ["llm", "inference"]}',
]


def train_tokenizer(with_bos_post_processor: bool = False) -> Tokenizer:
    """A byte-level BPE (every byte encodable) with ChatML and Llama-style special tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 20, trainer)
    if with_bos_post_processor:
        bos = tokenizer.token_to_id("<s>")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def write_tokenizer_dir(directory: Path, tokenizer: Tokenizer, config: dict) -> Path:
    """Save tokenizer.json and a hand-written tokenizer_config.json (loadable by transformers 4 and 5)."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    full = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 4096, **config}
    (directory / "tokenizer_config.json").write_text(json.dumps(full), encoding="utf-8")
    return directory
