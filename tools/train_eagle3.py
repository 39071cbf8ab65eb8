"""Train an EAGLE-3 head for a forgellm target (the demo by default) and save it in the published layout.

    python tools/train_eagle3.py --out forgellm/assets/demo-eagle3 [--device cuda] [--epochs 3] [--seed 0]

Data: the shipped calibration text (modules the demo trained on, none held out) cut into windows, plus
the target's own greedy answers to chat questions about functions of those modules (EAGLE heads learn
the target's outputs best from the target's outputs). The target runs once over every sequence through
forgellm's own model code, which records the residual stream entering three layers (the head's
features) and the target's argmax at every position (the labels).

Training follows EAGLE-3's "training-time test": step 0 predicts position i + 2 from (token i + 1, the
target's features at i); step s feeds the head its own step s - 1 output with token i + s + 1, attending
to the step-0 keys up to i and to its own earlier steps' keys at i, exactly what drafting does at
inference (spec_decode/eagle3.py). The loss is cross-entropy against the target's argmax over the
draft vocabulary (the most frequent labels); the head shares the target's embedding.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from forgellm import LLM, SamplingParams  # noqa: E402
from forgellm.engine.llm_engine import DEMO_MODEL_DIR  # noqa: E402
from forgellm.hf.config import load_model_config  # noqa: E402
from forgellm.models.eagle3 import default_aux_layers  # noqa: E402
from forgellm.worker.forward_batch import SequenceChunk, build_forward_batch  # noqa: E402
from forgellm.worker.kv_cache_memory import allocate_kv_cache  # noqa: E402
from forgellm.worker.model_runner import load_model  # noqa: E402

CALIBRATION = REPO / "forgellm" / "assets" / "calibration" / "calibration_sample.jsonl.gz"
CORPUS = REPO / "forgellm" / "assets" / "demo" / "corpus.json"


def _stdlib_names(seed: int) -> tuple[str, list[str]]:
    """The corpus's Python version and its training-split stdlib modules, shuffled by `seed`."""
    corpus = json.loads(CORPUS.read_text())
    names = list(corpus["train_files"]["stdlib"])
    random.Random(seed).shuffle(names)
    return corpus["python_version"], names


def stdlib_texts(limit: int, seed: int, stdlib_dir: str | None = None) -> list[str]:
    """Up to `limit` stdlib modules of the demo's training split (corpus.json), read from this Python's stdlib,
    which must be the corpus's version (the demo trained on exactly these files; none is held out), or from
    `stdlib_dir`: a copy made by `--export-stdlib` where that version runs, or another Python's stdlib (the
    same module names, so still none of the held-out ones; their text differs a little between versions)."""
    import sysconfig

    version, names = _stdlib_names(seed)
    if stdlib_dir is None and sys.version.split()[0] != version:
        raise SystemExit(
            f"--stdlib-files needs Python {version} (the corpus's stdlib), or --stdlib-dir with a copy of its "
            "modules made there by --export-stdlib"
        )
    root = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    # Another version's stdlib (--stdlib-dir) may lack a few of the training split's modules: those are skipped.
    paths = [root / name for name in names[:limit] if (root / name).is_file()]
    print(f"{len(paths)} of {min(limit, len(names))} training-split stdlib modules found in {root}")
    return [path.read_text(encoding="utf-8", errors="replace") for path in paths]


def export_stdlib(out: str, limit: int, seed: int) -> None:
    """Copy the modules stdlib_texts reads (this Python must be the corpus's version) to `out`."""
    _, names = _stdlib_names(seed)
    for name, text in zip(names, stdlib_texts(limit, seed)):
        path = Path(out) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    print(f"wrote {min(limit, len(names))} stdlib modules to {out}")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding (Llama's half-split layout) of x [B, heads, L, d] at positions [L]."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    angles = positions.float()[:, None] * inv_freq[None, :]
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    half = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], dim=-1)
    return x * cos + half * sin


class TrainableEagle3(nn.Module):
    """The head's math in plain torch over whole sequences, with EAGLE-3's unrolled training-time test."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, intermediate: int, draft_vocab: int,
                 target_hidden: int, eps: float, theta: float) -> None:  # fmt: skip
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.eps, self.theta = heads, kv_heads, head_dim, eps, theta
        self.hidden, self.intermediate = hidden, intermediate
        self.fc = nn.Linear(3 * target_hidden, hidden, bias=False)
        self.q_proj = nn.Linear(2 * hidden, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(2 * hidden, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(2 * hidden, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.norms = nn.ParameterDict(
            {n: nn.Parameter(torch.ones(hidden)) for n in ("input", "hidden", "post", "final")}
        )
        self.lm_head = nn.Linear(hidden, draft_vocab, bias=False)

    def _qkv(self, embeds: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = torch.cat(
            [rms_norm(embeds, self.norms["input"], self.eps), rms_norm(hidden, self.norms["hidden"], self.eps)], -1
        )
        b, length = x.shape[:2]
        q = self.q_proj(x).view(b, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, length, self.kv_heads, self.head_dim).transpose(1, 2)
        group = self.heads // self.kv_heads
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        return rotate(q, positions, self.theta), rotate(k, positions, self.theta), v

    def forward(self, embeds: list[torch.Tensor], features: torch.Tensor, steps: int) -> list[torch.Tensor]:
        """Draft-vocabulary logits [B, L, V_d] of each unrolled step; embeds[s] [B, L, H] is token i + s + 1's."""
        length = features.shape[1]
        anchors = torch.arange(length, device=features.device)
        causal = anchors[None, :] <= anchors[:, None]  # [query anchor, key anchor]
        hidden = self.fc(features)
        keys0 = values0 = None
        diagonal_keys: list[tuple[torch.Tensor, torch.Tensor]] = []
        outputs = []
        for step in range(steps):
            q, k, v = self._qkv(embeds[step], hidden, anchors + step)
            if step == 0:
                keys0, values0 = k, v
            else:
                diagonal_keys.append((k, v))
            scale = self.head_dim**-0.5
            scores = (q @ keys0.transpose(-1, -2)) * scale
            scores = scores.masked_fill(~causal, float("-inf"))
            extra = [(q * dk).sum(-1, keepdim=True) * scale for dk, _ in diagonal_keys]
            weights = torch.cat([scores, *extra], dim=-1).softmax(dim=-1)
            out = weights[..., :length] @ values0
            for r, (_, dv) in enumerate(diagonal_keys):
                out = out + weights[..., length + r : length + r + 1] * dv
            attended = self.o_proj(out.transpose(1, 2).flatten(2))
            residual = hidden + attended
            normed = rms_norm(residual, self.norms["post"], self.eps)
            hidden = residual + self.down_proj(F.silu(self.gate_proj(normed)) * self.up_proj(normed))
            outputs.append(self.lm_head(rms_norm(hidden, self.norms["final"], self.eps)))
        return outputs

    def published_tensors(self, draft_ids: torch.Tensor, vocab: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The weights under the published LlamaForCausalLMEagle3 names (no embed_tokens: the target's is shared)."""
        t2d = torch.zeros(vocab, dtype=torch.bool)
        t2d[draft_ids] = True
        names = {
            "fc.weight": self.fc, "midlayer.self_attn.q_proj.weight": self.q_proj,
            "midlayer.self_attn.k_proj.weight": self.k_proj, "midlayer.self_attn.v_proj.weight": self.v_proj,
            "midlayer.self_attn.o_proj.weight": self.o_proj, "midlayer.mlp.gate_proj.weight": self.gate_proj,
            "midlayer.mlp.up_proj.weight": self.up_proj, "midlayer.mlp.down_proj.weight": self.down_proj,
            "lm_head.weight": self.lm_head,
        }  # fmt: skip
        tensors = {name: module.weight.detach().to(dtype).cpu().contiguous() for name, module in names.items()}
        for name, key in (
            ("input_layernorm", "input"),
            ("hidden_norm", "hidden"),
            ("post_attention_layernorm", "post"),
        ):
            tensors[f"midlayer.{name}.weight"] = self.norms[key].detach().to(dtype).cpu()
        tensors["norm.weight"] = self.norms["final"].detach().to(dtype).cpu()
        tensors["d2t"] = (draft_ids - torch.arange(len(draft_ids))).to(torch.int64)
        tensors["t2d"] = t2d
        return tensors


def chat_questions(limit: int, seed: int) -> list[str]:
    """'What does `module.name` do?' for public functions of the calibration modules (all in the training split)."""
    questions = []
    for line in gzip.open(CALIBRATION, "rt"):
        entry = json.loads(line)
        if not entry["source"].startswith("stdlib/"):
            continue
        module = entry["source"].removeprefix("stdlib/").removesuffix(".py").replace("/", ".").removesuffix(".__init__")
        try:
            tree = ast.parse(entry["text"])
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                questions.append(f"What does `{module}.{node.name}` do?")
    random.Random(seed).shuffle(questions)
    return questions[:limit]


def training_sequences(
    llm: LLM,
    seq_len: int,
    num_chats: int,
    num_continuations: int,
    num_stdlib: int,
    seed: int,
    stdlib_dir: str | None = None,
) -> list[list[int]]:
    """Calibration-text windows of seq_len tokens (and of `num_stdlib` more training-split modules); chat
    conversations completed by the target (greedy); and the target's greedy continuations of window
    openings (its own code, as drafting will meet it)."""
    tokenizer = llm.get_tokenizer()
    texts = [json.loads(line)["text"] for line in gzip.open(CALIBRATION, "rt")]
    texts += stdlib_texts(num_stdlib, seed, stdlib_dir) if num_stdlib else []
    windows = []
    for text in texts:
        ids = tokenizer.encode(text)
        windows += [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len // 4, seq_len)]
    params = SamplingParams(temperature=0.0, max_tokens=96)
    conversations = [[{"role": "user", "content": q}] for q in chat_questions(num_chats, seed)]
    sequences = list(windows)
    for conversation, out in zip(conversations, llm.chat(conversations, params, use_tqdm=False)):
        sequences.append(llm.render_chat(conversation) + list(out.outputs[0].token_ids))
    openings = [w[: seq_len // 4] for w in random.Random(seed).sample(windows, min(num_continuations, len(windows)))]
    continued = SamplingParams(temperature=0.0, max_tokens=seq_len - seq_len // 4)
    for opening, out in zip(openings, llm.generate(openings, continued, use_tqdm=False)):
        sequences.append(opening + list(out.outputs[0].token_ids))
    return [s for s in sequences if len(s) >= 8]


@torch.no_grad()
def target_features(model: nn.Module, sequence: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's features [L, 3H] (residual stream entering the aux layers) and argmax [L] at every position."""
    blocks = -(-len(sequence) // 16)
    allocate_kv_cache(model, blocks, 16, next(model.parameters()).dtype)
    chunk = SequenceChunk(sequence, 0, list(range(blocks)), list(range(len(sequence))))
    batch = build_forward_batch([chunk], 16, device)
    hidden = model(batch.input_ids, batch.positions, batch)
    # Logits a slice at a time: [L, vocab] float32 at once is the largest temporary of the loop.
    labels = torch.cat([model.compute_logits(part).argmax(-1) for part in hidden.split(64)])
    return model.aux_hidden[: len(sequence)].clone(), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--target", default=str(DEMO_MODEL_DIR))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--num-chats", type=int, default=600)
    parser.add_argument("--num-continuations", type=int, default=0, help="greedy continuations of text openings")
    parser.add_argument("--stdlib-files", type=int, default=0, help="training-split stdlib modules to add (local)")
    parser.add_argument("--stdlib-dir", help="a copy of the corpus's stdlib (--export-stdlib), or another Python's")
    parser.add_argument("--export-stdlib", action="store_true", help="copy --stdlib-files modules to --out and exit")
    parser.add_argument("--draft-vocab", type=int, default=2048)
    parser.add_argument("--ttt-steps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.export_stdlib:
        export_stdlib(args.out, args.stdlib_files, args.seed)
        return
    started = time.time()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    arch = load_model_config(args.target)
    layers = default_aux_layers(arch.num_hidden_layers)
    llm = LLM(args.target, device=args.device, dtype="float32", seed=args.seed)
    sequences = training_sequences(
        llm, args.seq_len, args.num_chats, args.num_continuations, args.stdlib_files, args.seed, args.stdlib_dir
    )
    del llm
    model = load_model(Path(args.target), arch, torch.float32, device)
    model.capture_aux_hidden_states(layers, max(len(s) for s in sequences))
    # One preallocated bfloat16 store for every sequence's features: per-sequence tensors interleaved with the
    # forward's large temporaries fragmented the heap (7 MB of resident memory per 256-token sequence).
    total = sum(len(s) for s in sequences)
    store = torch.empty(total, len(layers) * arch.hidden_size, dtype=torch.bfloat16, device=device)
    labels_store = torch.empty(total, dtype=torch.long, device=device)
    data, offset = [], 0
    for sequence in sequences:
        features, labels = target_features(model, sequence, device)
        store[offset : offset + len(sequence)].copy_(features)
        labels_store[offset : offset + len(sequence)].copy_(labels)
        span = slice(offset, offset + len(sequence))
        data.append((torch.tensor(sequence), store[span], labels_store[span]))
        offset += len(sequence)
    embedding = model.embed_tokens.weight.detach()
    labels_all = torch.cat([labels for _, _, labels in data]).cpu()  # the draft vocabulary is chosen on the host
    draft_ids = (
        labels_all.bincount(minlength=arch.vocab_size).argsort(descending=True)[: args.draft_vocab].sort().values
    )
    to_draft = torch.full((arch.vocab_size,), -100, dtype=torch.long)
    to_draft[draft_ids] = torch.arange(len(draft_ids))
    covered = (to_draft[labels_all] >= 0).float().mean().item()
    print(f"{len(data)} sequences, {labels_all.numel()} tokens, draft vocabulary covers {covered:.1%} of labels")
    to_draft = to_draft.to(device)
    head = TrainableEagle3(arch.hidden_size, arch.num_attention_heads, arch.num_key_value_heads, arch.head_dim,
                           arch.intermediate_size, len(draft_ids), arch.hidden_size, arch.rms_norm_eps,
                           arch.rope.theta).to(device)  # fmt: skip
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=0.0)
    total_steps = args.epochs * math.ceil(len(data) / args.batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=total_steps, pct_start=0.1)
    rng = random.Random(args.seed)
    log = []
    for epoch in range(args.epochs):
        order = list(range(len(data)))
        rng.shuffle(order)
        for first in range(0, len(order), args.batch):
            loss, accuracy = train_step(head, [data[i] for i in order[first : first + args.batch]], embedding,
                                        to_draft, args.ttt_steps)  # fmt: skip
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            log.append({"epoch": epoch, "loss": round(loss.item(), 4), "accuracy": [round(a, 4) for a in accuracy]})
        print(f"epoch {epoch}: loss {log[-1]['loss']}, step accuracies {log[-1]['accuracy']}", flush=True)
    save_head(head, draft_ids, arch, layers, Path(args.out), args, time.time() - started, log, covered, len(data))


def train_step(head: TrainableEagle3, batch: list, embedding: torch.Tensor, to_draft: torch.Tensor, steps: int):  # noqa: ANN201
    """Loss and per-step top-1 accuracy over a batch of (tokens, features, target argmax) padded to one length."""
    length = max(len(tokens) for tokens, _, _ in batch)
    device = embedding.device
    tokens = torch.stack([F.pad(t, (0, length - len(t)), value=0) for t, _, _ in batch]).to(device)
    features = torch.stack([F.pad(f, (0, 0, 0, length - len(f))) for _, f, _ in batch]).to(device).float()
    argmax = torch.stack([F.pad(a, (0, length - len(a)), value=-1) for _, _, a in batch]).to(device)
    valid = torch.stack([torch.arange(length) < len(t) for t, _, _ in batch]).to(device)
    embeds, targets = [], []
    for step in range(steps):
        # Anchor i: token i + step + 1 goes in, the target's argmax at position i + step + 1 comes out.
        shift = step + 1
        embeds.append(embedding[F.pad(tokens[:, shift:], (0, shift), value=0)])
        label = F.pad(argmax[:, shift:], (0, shift), value=-1)
        ok = F.pad(valid[:, shift:], (0, shift), value=False) & (label >= 0)
        mapped = to_draft[label.clamp_min(0)]
        targets.append(torch.where(ok & (mapped >= 0), mapped, -100))
    outputs = head(embeds, features, steps)
    losses, accuracy = [], []
    for logits, target in zip(outputs, targets):
        losses.append(F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100))
        counted = target >= 0
        accuracy.append(((logits.argmax(-1) == target) & counted).sum().item() / max(counted.sum().item(), 1))
    return sum(losses) / len(losses), accuracy


def write_head(head: TrainableEagle3, draft_ids: torch.Tensor, arch, layers, out: Path, dtype: torch.dtype) -> None:  # noqa: ANN001
    """config.json and model.safetensors of the head in the published LlamaForCausalLMEagle3 layout."""
    out.mkdir(parents=True, exist_ok=True)
    save_file(head.published_tensors(draft_ids, arch.vocab_size, dtype), str(out / "model.safetensors"))
    config = {
        "architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "hidden_size": head.hidden,
        "target_hidden_size": arch.hidden_size, "intermediate_size": head.intermediate, "num_hidden_layers": 1,
        "num_attention_heads": head.heads, "num_key_value_heads": head.kv_heads,
        "head_dim": head.head_dim, "vocab_size": arch.vocab_size, "draft_vocab_size": len(draft_ids),
        "max_position_embeddings": arch.max_position_embeddings, "rms_norm_eps": arch.rms_norm_eps,
        "rope_theta": arch.rope.theta, "hidden_act": "silu", "torch_dtype": str(dtype).removeprefix("torch."),
        "eagle_aux_hidden_state_layer_ids": list(layers),
    }  # fmt: skip
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def save_head(head: TrainableEagle3, draft_ids: torch.Tensor, arch, layers, out: Path, args, seconds, log, covered, n):  # noqa: ANN001
    write_head(head, draft_ids, arch, layers, out, torch.bfloat16)
    command = "python tools/train_eagle3.py " + " ".join(sys.argv[1:])
    record = {"command": command, "seconds": round(seconds, 1), "device": args.device, "sequences": n,
              "draft_vocab_coverage": round(covered, 4), "final": log[-1], "torch": torch.__version__}  # fmt: skip
    (out / "train_log.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
