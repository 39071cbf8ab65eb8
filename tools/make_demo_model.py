"""Write the embedded demo model (forgellm/assets/demo/): a tiny random-weight Llama and a BPE tokenizer.

Runs offline with core dependencies only (torch, safetensors, tokenizers). The tokenizer is trained
on the Python standard library's own source (PSF-2.0), so the output depends on the Python version
that runs this script; corpus.json records which files were used.

    python tools/make_demo_model.py [--out forgellm/assets/demo]
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SEED = 1234
VOCAB_SIZE = 4096
# Enough text for a useful 4k vocabulary while keeping training to a few seconds.
CORPUS_BYTE_CAP = 3_000_000
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ARCH = {
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "max_position_embeddings": 2048,
}
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "forgellm" / "assets" / "demo"


def select_corpus(byte_cap: int = CORPUS_BYTE_CAP) -> list[Path]:
    """Top-level stdlib .py files in name order, stopping once `byte_cap` bytes are collected."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    chosen: list[Path] = []
    total = 0
    for path in sorted(stdlib.glob("*.py"), key=lambda p: p.name):
        if total >= byte_cap:
            break
        chosen.append(path)
        total += path.stat().st_size
    if not chosen:
        raise SystemExit(f"no .py files found in {stdlib}")
    return chosen


def train_tokenizer(files: list[Path]) -> Tokenizer:
    """Train a byte-level BPE whose alphabet covers all 256 bytes, so any text is encodable."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = (p.read_bytes().decode("utf-8", errors="replace") for p in files)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def special_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """Map each special token to its id (the trainer puts them first, but never assume)."""
    ids = {tok: tokenizer.token_to_id(tok) for tok in SPECIAL_TOKENS}
    missing = [tok for tok, i in ids.items() if i is None]
    if missing:
        raise SystemExit(f"special tokens missing from the trained vocabulary: {missing}")
    return ids


def model_config(ids: dict[str, int]) -> dict:
    """config.json of a Llama in the Hugging Face (v4) spelling."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB_SIZE,
        **ARCH,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "initializer_range": 0.02,
        "torch_dtype": "bfloat16",
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|endoftext|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }


def generation_config(ids: dict[str, int]) -> dict:
    """Stop on end-of-text (plain generation) and end-of-turn (chat); no sampling defaults."""
    return {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": [ids["<|endoftext|>"], ids["<|im_end|>"]],
        "pad_token_id": ids["<|endoftext|>"],
    }


def tokenizer_config() -> dict:
    """tokenizer_config.json: the HF fast-tokenizer class, special tokens and a ChatML template."""
    added = {
        str(i): {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, tok in enumerate(SPECIAL_TOKENS)
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": ARCH["max_position_embeddings"],
        "chat_template": CHAT_TEMPLATE,
    }


def random_weights(seed: int = SEED) -> dict[str, torch.Tensor]:
    """Seeded N(0, 0.02) matrices and unit norms, under the HF Llama names (lm_head tied, absent)."""
    gen = torch.Generator().manual_seed(seed)
    hidden, inter = ARCH["hidden_size"], ARCH["intermediate_size"]
    q_out = ARCH["num_attention_heads"] * ARCH["head_dim"]
    kv_out = ARCH["num_key_value_heads"] * ARCH["head_dim"]

    def normal(*shape: int) -> torch.Tensor:
        # Draw in float32 so the values do not depend on bf16 sampling support.
        return (torch.randn(*shape, generator=gen) * 0.02).to(torch.bfloat16)

    weights = {"model.embed_tokens.weight": normal(VOCAB_SIZE, hidden)}
    for i in range(ARCH["num_hidden_layers"]):
        prefix = f"model.layers.{i}"
        weights[f"{prefix}.self_attn.q_proj.weight"] = normal(q_out, hidden)
        weights[f"{prefix}.self_attn.k_proj.weight"] = normal(kv_out, hidden)
        weights[f"{prefix}.self_attn.v_proj.weight"] = normal(kv_out, hidden)
        weights[f"{prefix}.self_attn.o_proj.weight"] = normal(hidden, q_out)
        weights[f"{prefix}.mlp.gate_proj.weight"] = normal(inter, hidden)
        weights[f"{prefix}.mlp.up_proj.weight"] = normal(inter, hidden)
        weights[f"{prefix}.mlp.down_proj.weight"] = normal(hidden, inter)
        weights[f"{prefix}.input_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
        weights[f"{prefix}.post_attention_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    weights["model.norm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    return weights


def corpus_record(files: list[Path]) -> dict:
    """corpus.json: enough to tell which stdlib produced the tokenizer."""
    return {
        "source": "Python standard library, top-level *.py files in name order",
        "python_version": sys.version.split()[0],
        "licence": "PSF-2.0",
        "file_count": len(files),
        "byte_count": sum(p.stat().st_size for p in files),
        "files": [p.name for p in files],
    }


def write_json(path: Path, data: dict) -> None:
    """Write indented JSON with a trailing newline, so regenerated files diff cleanly."""
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Generate every demo asset into --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    files = select_corpus()
    tokenizer = train_tokenizer(files)
    ids = special_ids(tokenizer)
    tokenizer.save(str(out / "tokenizer.json"), pretty=True)
    write_json(out / "tokenizer_config.json", tokenizer_config())
    write_json(out / "config.json", model_config(ids))
    write_json(out / "generation_config.json", generation_config(ids))
    write_json(out / "corpus.json", corpus_record(files))
    save_file(random_weights(), str(out / "model.safetensors"), metadata={"format": "pt"})

    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"wrote {out} ({total / 1e6:.1f} MB; tokenizer trained on {len(files)} stdlib files)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
