"""Write the embedded demo models' files: the BPE tokenizer, the HF configs, and the trained weights.

    python tools/make_demo_model.py tokenizer [--corpus .train]   # tokenizer + configs, both models
    python tools/make_demo_model.py weights --from DIR             # DIR/<model>.partN.safetensors

`tokenizer` trains a byte-level BPE on the stdlib part of the corpus made by tools/build_corpus.py
and writes every file except the weights into forgellm/assets/demo/ and forgellm/assets/demo-draft/
(or into --assets, e.g. .train/assets to stage a new tokenizer without breaking the shipped models
before their new weights exist). `weights` stores the checkpoints written by tools/train_demo.py as
bf16 model.safetensors. The full pipeline is in forgellm/assets/demo/README.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "forgellm" / "assets"
DEFAULT_CORPUS = REPO / ".train"
VOCAB_SIZE = 8192
# The tokenizer learns from the stdlib and its documentation only, so it is the same wherever the
# same Python version runs, whatever else is installed.
TOKENIZER_SOURCES = ("stdlib", "pydoc_topics")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (  # ChatML; with tools, a Hermes-style system block, calls and tool responses (as Qwen2.5)
    "{%- if tools %}{{ '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}"
    "{% endif %}{{ '# Tools\\n\\nYou may call one or more functions to assist with the user query"
    ".\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>' "
    "}}"
    "{%- for tool in tools %}{{ '\\n' + (tool | tojson) }}"
    "{% endfor %}{{ '\\n</tools>\\n\\nFor each function call, return a json object with function n"
    'ame and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{"name": <functio'
    'n-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n\' }}'
    "{% endif %}"
    "{%- for message in messages %}"
    "{%- if tools and loop.first and message['role'] == 'system' %}"
    "{%- elif message['role'] == 'tool' %}{{ '<|im_start|>user\\n<tool_response>\\n' + message['c"
    "ontent'] + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- elif message['role'] == 'assistant' and message['tool_calls'] is defined and message['"
    "tool_calls'] %}{{ '<|im_start|>assistant\\n' + message['content'] }}"
    "{%- for call in message['tool_calls'] %}{{ '<tool_call>\\n{\"name\": ' + (call['function']['n"
    "ame'] | tojson) + ', \"arguments\": ' + (call['function']['arguments'] | tojson) + '}\\n</too"
    "l_call>' }}"
    "{%- endfor %}{{ '<|im_end|>\\n' }}"
    "{%- else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' "
    "+ '\\n' }}"
    "{% endif %}"
    "{%- endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)
CONTEXT = 2048
# Model name -> architecture. The target is ~20M parameters with 3:1 grouped-query attention;
# the draft (~2.8M) shares the tokenizer so it can propose tokens for the target to verify.
ARCHS: dict[str, dict] = {
    "demo": {
        "hidden_size": 384,
        "intermediate_size": 1024,
        "num_hidden_layers": 11,
        "num_attention_heads": 6,
        "num_key_value_heads": 2,
        "head_dim": 64,
    },
    "demo-draft": {
        "hidden_size": 192,
        "intermediate_size": 512,
        "num_hidden_layers": 3,
        "num_attention_heads": 3,
        "num_key_value_heads": 1,
        "head_dim": 64,
    },
}


def read_documents(corpus: Path, sources: tuple[str, ...]) -> list[str]:
    """Texts of the corpus documents whose source is in `sources`, in file order."""
    texts = []
    with open(corpus / "train.jsonl", encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            if doc["source"] in sources:
                texts.append(doc["text"])
    return texts


def train_tokenizer(texts: list[str]) -> Tokenizer:
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
    tokenizer.train_from_iterator(texts, trainer=trainer)
    ids = [tokenizer.token_to_id(tok) for tok in SPECIAL_TOKENS]
    if ids != [0, 1, 2]:  # the chat template, configs and tests rely on these ids
        raise SystemExit(f"special tokens got ids {ids}, expected [0, 1, 2]")
    return tokenizer


def model_config(name: str) -> dict:
    """config.json of a Llama in the Hugging Face (v4) spelling."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB_SIZE,
        **ARCHS[name],
        "max_position_embeddings": CONTEXT,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "initializer_range": 0.02,
        "torch_dtype": "bfloat16",
        "bos_token_id": 0,
        "eos_token_id": 0,
        "pad_token_id": 0,
    }


def generation_config() -> dict:
    """Stop on end-of-text (plain generation) and end-of-turn (chat); no sampling defaults."""
    return {"bos_token_id": 0, "eos_token_id": [0, 2], "pad_token_id": 0}


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
        "model_max_length": CONTEXT,
        "chat_template": CHAT_TEMPLATE,
    }


def write_json(path: Path, data: dict) -> None:
    """Write indented JSON with a trailing newline, so regenerated files diff cleanly."""
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_tokenizer_and_configs(corpus: Path, assets: Path) -> None:
    """Train the tokenizer once and write it with each model's configs into assets/<model>/."""
    tokenizer = train_tokenizer(read_documents(corpus, TOKENIZER_SOURCES))
    for name in ARCHS:
        out = assets / name
        out.mkdir(parents=True, exist_ok=True)
        tokenizer.save(str(out / "tokenizer.json"), pretty=True)
        write_json(out / "tokenizer_config.json", tokenizer_config())
        write_json(out / "config.json", model_config(name))
        write_json(out / "generation_config.json", generation_config())
    shutil.copy(corpus / "corpus.json", assets / "demo" / "corpus.json")
    print(f"wrote tokenizer (vocab {tokenizer.get_vocab_size()}) and configs for {', '.join(ARCHS)}")


def write_weights(trained: Path, assets: Path) -> None:
    """Copy trained checkpoints into the assets as bf16, tied embeddings without lm_head."""
    for name in ARCHS:
        shards = sorted(trained.glob(f"{name}.part*.safetensors"))
        if not shards:
            raise SystemExit(f"no {name}.part*.safetensors in {trained}")
        weights = {k: v for shard in shards for k, v in load_file(str(shard)).items()}
        weights.pop("lm_head.weight", None)  # tie_word_embeddings: the head is the embedding
        weights = {k: v.to(torch.bfloat16).contiguous() for k, v in sorted(weights.items())}
        path = assets / name / "model.safetensors"
        save_file(weights, str(path), metadata={"format": "pt"})
        params = sum(v.numel() for v in weights.values())
        print(f"{path}: {params / 1e6:.2f}M parameters, {path.stat().st_size / 1e6:.1f} MB")


def main(argv: list[str] | None = None) -> int:
    """Run the `tokenizer` or `weights` step."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    tok = steps.add_parser("tokenizer", help="train the tokenizer and write configs")
    tok.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="folder made by build_corpus.py")
    tok.add_argument("--assets", type=Path, default=ASSETS, help="where demo/ and demo-draft/ go")
    wts = steps.add_parser("weights", help="store trained weights as bf16 model.safetensors")
    wts.add_argument("--from", dest="trained", type=Path, required=True, help="folder from train_demo.py")
    wts.add_argument("--assets", type=Path, default=ASSETS, help="where demo/ and demo-draft/ go")
    args = parser.parse_args(argv)
    if args.step == "tokenizer":
        write_tokenizer_and_configs(args.corpus, args.assets)
    else:
        write_weights(args.trained, args.assets)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
