"""Session fixtures for tests/hf: tokenizer directories and their transformers reference."""

from __future__ import annotations

from pathlib import Path

import pytest
from hf_fixtures import CHATML_TEMPLATE, train_tokenizer, write_tokenizer_dir


@pytest.fixture(scope="session")
def chatml_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Qwen-style tokenizer directory: no BOS, <|im_end|> as EOS, an inline ChatML template."""
    config = {
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": {"__type": "AddedToken", "content": "<|endoftext|>", "special": True, "normalized": False},
        "chat_template": CHATML_TEMPLATE,
    }
    return write_tokenizer_dir(tmp_path_factory.mktemp("chatml"), train_tokenizer(), config)


@pytest.fixture(scope="session")
def llama_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama-2-style tokenizer directory: a post-processor that prepends <s>, and an unknown pad token."""
    config = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    return write_tokenizer_dir(tmp_path_factory.mktemp("llama"), train_tokenizer(True), config)


@pytest.fixture(scope="session")
def hf_chatml_tokenizer(chatml_tokenizer_dir: Path):
    """transformers' view of `chatml_tokenizer_dir`, the reference."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(chatml_tokenizer_dir))


@pytest.fixture(scope="session")
def hf_llama_tokenizer(llama_tokenizer_dir: Path):
    """transformers' view of `llama_tokenizer_dir`, the reference."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(llama_tokenizer_dir))
