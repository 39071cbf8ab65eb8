"""The embedded demo model is a valid Hugging Face checkpoint and matches tools/make_demo_model.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open
from tokenizers import Tokenizer

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "forgellm" / "assets" / "demo"
GENERATED = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "corpus.json",
    "model.safetensors",
)
# Every byte value, control characters, accents, CJK, combining marks, emoji with joiners.
AWKWARD_TEXT = (
    "".join(chr(i) for i in range(256))
    + "naïve café 東京 עברית ﷺ e\u0301 🦀🐍 👩‍👩‍👧 \U0010ffff\n\tdef f(x):\n    return x  # ok\r\n"
)


def load_json(name: str) -> dict:
    return json.loads((DEMO / name).read_text(encoding="utf-8"))


def test_all_files_present_and_small() -> None:
    for name in (*GENERATED, "README.md"):
        assert (DEMO / name).is_file(), name
    total = sum(p.stat().st_size for p in DEMO.iterdir() if p.is_file())
    assert total < 10_000_000


def test_tensor_names_shapes_and_dtype() -> None:
    config = load_json("config.json")
    hidden, head_dim = config["hidden_size"], config["head_dim"]
    with safe_open(str(DEMO / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
        assert f.get_slice("model.embed_tokens.weight").get_shape() == [config["vocab_size"], hidden]
        k_shape = f.get_slice("model.layers.0.self_attn.k_proj.weight").get_shape()
        assert k_shape == [config["num_key_value_heads"] * head_dim, hidden]
        assert {f.get_slice(n).get_dtype() for n in names} == {"BF16"}
    assert "lm_head.weight" not in names
    per_layer = 9
    assert len(names) == 2 + per_layer * config["num_hidden_layers"]


def test_special_tokens_and_eos() -> None:
    tokenizer = Tokenizer.from_file(str(DEMO / "tokenizer.json"))
    assert tokenizer.get_vocab_size() == 4096
    ids = [tokenizer.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")]
    assert ids == [0, 1, 2]
    assert load_json("generation_config.json")["eos_token_id"] == [0, 2]
    assert load_json("config.json")["eos_token_id"] == 0


def test_tokenizer_round_trips_any_text() -> None:
    tokenizer = Tokenizer.from_file(str(DEMO / "tokenizer.json"))
    ids = tokenizer.encode(AWKWARD_TEXT, add_special_tokens=False).ids
    assert tokenizer.decode(ids, skip_special_tokens=False) == AWKWARD_TEXT
    # Source code, what the vocabulary was trained on, compresses well.
    code = "def main(argv):\n    for name in sorted(argv):\n        print(name)\n"
    assert len(tokenizer.encode(code).ids) < len(code) / 2.5


def test_loads_with_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    import torch

    model, info = transformers.AutoModelForCausalLM.from_pretrained(str(DEMO), output_loading_info=True)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.dtype == torch.bfloat16
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(DEMO))
    ids = tokenizer.encode(AWKWARD_TEXT, add_special_tokens=False)
    assert tokenizer.decode(ids) == AWKWARD_TEXT
    assert tokenizer.eos_token == "<|endoftext|>"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 👋"}]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi 👋<|im_end|>\n<|im_start|>assistant\n"
    )
    chat_ids = tokenizer.encode(rendered, add_special_tokens=False)
    assert chat_ids[0] == 1 and chat_ids.count(2) == 2  # special tokens encode as single ids


def test_regenerating_reproduces_the_committed_files(tmp_path: Path) -> None:
    corpus = load_json("corpus.json")
    if corpus["python_version"] != sys.version.split()[0]:
        pytest.skip(f"the tokenizer corpus is Python {corpus['python_version']}'s stdlib")
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_demo_model.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    for name in GENERATED:
        assert (tmp_path / name).read_bytes() == (DEMO / name).read_bytes(), name
