"""The embedded demo models are valid Hugging Face checkpoints, trained, and match the tools that made them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open
from tokenizers import Tokenizer

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "forgellm" / "assets"
DEMO, DRAFT = ASSETS / "demo", ASSETS / "demo-draft"
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors")
# Every byte value, control characters, accents, CJK, combining marks, emoji with joiners.
AWKWARD_TEXT = (
    "".join(chr(i) for i in range(256))
    + "naïve café 東京 עברית ﷺ e\u0301 🦀🐍 👩‍👩‍👧 \U0010ffff\n\tdef f(x):\n    return x  # ok\r\n"
)
# Code the models never saw (written for this test), to check that they learned Python.
UNSEEN_CODE = '''def merge_sorted(left, right):
    """Merge two sorted lists into one sorted list."""
    result = []
    i = j = 0
    while i < len(left) and j < len(right):
        if left[i] <= right[j]:
            result.append(left[i])
            i += 1
        else:
            result.append(right[j])
            j += 1
    result.extend(left[i:])
    result.extend(right[j:])
    return result


class Counter:
    """Count how often each key is seen."""

    def __init__(self):
        self.counts = {}

    def add(self, key):
        self.counts[key] = self.counts.get(key, 0) + 1
        return self.counts[key]
'''


def load_json(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text(encoding="utf-8"))


def num_parameters(folder: Path) -> int:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        total = 0
        for name in f.keys():
            shape = f.get_slice(name).get_shape()
            total += shape[0] * (shape[1] if len(shape) > 1 else 1)
        return total


def test_all_files_present_and_sizes() -> None:
    for name in (*MODEL_FILES, "corpus.json", "README.md"):
        assert (DEMO / name).is_file(), name
    for name in MODEL_FILES:
        assert (DRAFT / name).is_file(), name
    assert sum(p.stat().st_size for p in DEMO.iterdir()) < 45_000_000  # the repo must travel in 64 MB
    assert 15_000_000 <= num_parameters(DEMO) <= 22_000_000
    assert num_parameters(DRAFT) <= 3_000_000


@pytest.mark.parametrize("folder", [DEMO, DRAFT], ids=["demo", "draft"])
def test_tensor_names_shapes_and_dtype(folder: Path) -> None:
    config = load_json(folder, "config.json")
    hidden, head_dim = config["hidden_size"], config["head_dim"]
    assert config["num_key_value_heads"] < config["num_attention_heads"]  # grouped-query attention
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
        assert f.get_slice("model.embed_tokens.weight").get_shape() == [config["vocab_size"], hidden]
        k_shape = f.get_slice("model.layers.0.self_attn.k_proj.weight").get_shape()
        assert k_shape == [config["num_key_value_heads"] * head_dim, hidden]
        assert {f.get_slice(n).get_dtype() for n in names} == {"BF16"}
    assert "lm_head.weight" not in names
    per_layer = 9
    assert len(names) == 2 + per_layer * config["num_hidden_layers"]


def test_special_tokens_eos_and_shared_tokenizer() -> None:
    tokenizer = Tokenizer.from_file(str(DEMO / "tokenizer.json"))
    assert 8192 <= tokenizer.get_vocab_size() <= 16384
    assert tokenizer.get_vocab_size() == load_json(DEMO, "config.json")["vocab_size"]
    ids = [tokenizer.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")]
    assert ids == [0, 1, 2]
    for folder in (DEMO, DRAFT):
        assert load_json(folder, "generation_config.json")["eos_token_id"] == [0, 2]
        assert load_json(folder, "config.json")["eos_token_id"] == 0
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (DEMO / name).read_bytes() == (DRAFT / name).read_bytes()


def test_tokenizer_round_trips_any_text() -> None:
    tokenizer = Tokenizer.from_file(str(DEMO / "tokenizer.json"))
    ids = tokenizer.encode(AWKWARD_TEXT, add_special_tokens=False).ids
    assert tokenizer.decode(ids, skip_special_tokens=False) == AWKWARD_TEXT
    # Source code, what the vocabulary was trained on, compresses well.
    assert len(tokenizer.encode(UNSEEN_CODE).ids) < len(UNSEEN_CODE) / 3


def test_corpus_record_names_sources_licences_and_heldout_files() -> None:
    record = load_json(DEMO, "corpus.json")
    assert all(source["licence"] for source in record["sources"])
    train = {f"{source}/{path}" for source, paths in record["train_files"].items() for path in paths}
    assert record["heldout_files"] and not train & set(record["heldout_files"])


@pytest.mark.parametrize("folder", [DEMO, DRAFT], ids=["demo", "draft"])
def test_loads_with_transformers(folder: Path) -> None:
    transformers = pytest.importorskip("transformers")
    import torch

    model, info = transformers.AutoModelForCausalLM.from_pretrained(str(folder), output_loading_info=True)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.dtype == torch.bfloat16
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
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


def test_models_are_trained_and_the_draft_agrees_with_the_target() -> None:
    from forgellm import LLM
    from forgellm.eval import greedy_agreement, perplexity_report, score_texts

    demo = score_texts(LLM(str(DEMO)), [UNSEEN_CODE])
    draft = score_texts(LLM(str(DRAFT)), [UNSEEN_CODE])
    demo_report, draft_report = perplexity_report(demo), perplexity_report(draft)
    # Random weights give about the vocabulary size (8192); token frequencies alone give ~60 here.
    assert demo_report.perplexity < 6 < demo_report.unigram_perplexity / 5
    assert draft_report.perplexity < 12
    assert greedy_agreement(demo, draft) > 0.5


def test_chat_answers_from_docstrings() -> None:
    from forgellm import LLM, SamplingParams

    llm = LLM(str(DEMO))
    messages = [{"role": "user", "content": "What does os.path.join do?"}]
    answer = llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=48), use_tqdm=False)[0].outputs[0]
    assert "path" in answer.text.lower() and answer.finish_reason == "stop"


def test_regenerating_reproduces_the_tokenizer_and_configs(tmp_path: Path) -> None:
    record = load_json(DEMO, "corpus.json")
    if record["python_version"] != sys.version.split()[0]:
        pytest.skip(f"the tokenizer corpus is Python {record['python_version']}'s stdlib")
    # The tokenizer learns from the stdlib alone, so the extra packages need not be collected.
    for script, args in (
        ("build_corpus.py", ["--out", str(tmp_path), "--stdlib-only"]),
        ("make_demo_model.py", ["tokenizer", "--corpus", str(tmp_path), "--assets", str(tmp_path / "assets")]),
    ):
        subprocess.run(
            [sys.executable, str(REPO / "tools" / script), *args], check=True, capture_output=True, timeout=300
        )
    for folder in (DEMO, DRAFT):
        for name in MODEL_FILES[:-1]:
            assert (tmp_path / "assets" / folder.name / name).read_bytes() == (folder / name).read_bytes(), name
