"""Train the demo model family on one GPU: `demo` on the corpus, then `demo-draft` distilled from it.

    python tools/train_demo.py --data .train --out OUT [--demo-steps N] [--draft-steps N] [--smoke]

Plain PyTorch (tools/llama_model.py), seeded: AdamW, linear warm-up then cosine decay, bf16
autocast, torch.compile. Reads the models' config.json from --data/assets/<name>/ and the token
files made by tools/tokenize_corpus.py; writes each model as bf16 safetensors shards
(OUT/<name>.partN.safetensors, each under 16 MB) and OUT/train_log.json.
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from llama_model import LlamaForCausalLM
from safetensors.torch import save_file

SEED = 1234
SHARD_BYTES = 12_000_000


@dataclass
class Schedule:
    """One model's optimisation settings."""

    steps: int
    batch: int
    seq_len: int
    lr: float
    warmup: int
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    distill: float = 0.0  # weight of the KL-to-teacher term (the rest is cross-entropy)

    def lr_at(self, step: int) -> float:
        """Linear warm-up to `lr`, then cosine decay to lr * min_lr_ratio."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def load_tokens(path: Path, device: torch.device) -> torch.Tensor:
    """An xz-compressed uint16 .npy token file as an int64 tensor on `device`."""
    with lzma.open(path, "rb") as fh:
        array = np.load(fh)
    return torch.from_numpy(array.astype(np.int64)).to(device)


def random_windows(tokens: torch.Tensor, batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """`batch` windows of `length + 1` consecutive tokens at seeded random offsets."""
    starts = torch.randint(0, tokens.numel() - length - 1, (batch,), generator=gen, device=tokens.device)
    return tokens[starts[:, None] + torch.arange(length + 1, device=tokens.device)]


def make_optimizer(model: torch.nn.Module, schedule: Schedule) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not norms), fused on a GPU."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": schedule.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = next(model.parameters()).is_cuda
    return torch.optim.AdamW(groups, lr=schedule.lr, betas=(0.9, 0.95), eps=1e-8, fused=fused)


def loss_fn(logits: torch.Tensor, targets: torch.Tensor, teacher: torch.Tensor | None, distill: float) -> torch.Tensor:
    """Cross-entropy, mixed with KL(teacher || student) when a teacher's logits are given."""
    ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    if teacher is None or distill == 0.0:
        return ce
    student_logp = F.log_softmax(logits.float(), dim=-1).flatten(0, 1)
    teacher_logp = F.log_softmax(teacher.float(), dim=-1).flatten(0, 1)
    kl = F.kl_div(student_logp, teacher_logp, log_target=True, reduction="batchmean")
    return (1 - distill) * ce + distill * kl


@torch.no_grad()
def heldout_perplexity(model: torch.nn.Module, tokens: torch.Tensor, seq_len: int) -> float:
    """Perplexity over consecutive non-overlapping windows of the held-out tokens."""
    n = (tokens.numel() - 1) // seq_len
    inputs = tokens[: n * seq_len].view(n, seq_len)
    targets = tokens[1 : n * seq_len + 1].view(n, seq_len)
    total = 0.0
    for i in range(0, n, 8):
        with torch.autocast(tokens.device.type, dtype=torch.bfloat16):
            logits = model(inputs[i : i + 8])
        total += F.cross_entropy(logits.flatten(0, 1).float(), targets[i : i + 8].flatten(), reduction="sum").item()
    return math.exp(total / (n * seq_len))


def train(
    name: str,
    config: dict,
    schedule: Schedule,
    data: tuple[torch.Tensor, torch.Tensor],
    teacher: torch.nn.Module | None,
    log: dict,
    compile_model: bool = True,
) -> LlamaForCausalLM:
    """Train one model from its seeded initialisation; record losses and timings in `log[name]`."""
    train_tokens, heldout_tokens = data
    device = train_tokens.device
    torch.manual_seed(SEED)
    raw = LlamaForCausalLM(config).to(device)
    model = torch.compile(raw) if compile_model else raw
    optimizer = make_optimizer(raw, schedule)
    gen = torch.Generator(device=device).manual_seed(SEED)
    entry = {"schedule": asdict(schedule), "parameters": sum(p.numel() for p in raw.parameters()), "curve": []}
    log[name] = entry
    start, tokens_seen, compiled_at = time.perf_counter(), 0, None
    for step in range(schedule.steps):
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr_at(step)
        window = random_windows(train_tokens, schedule.batch, schedule.seq_len, gen)
        inputs, targets = window[:, :-1], window[:, 1:]
        with torch.autocast(device.type, dtype=torch.bfloat16):
            teacher_logits = None
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(inputs)
            loss = loss_fn(model(inputs), targets, teacher_logits, schedule.distill)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(raw.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += inputs.numel()
        if step == 1:  # the first steps include compilation; measure throughput after them
            synchronize(device)
            compiled_at, tokens_at = time.perf_counter(), tokens_seen
        if step % 100 == 0 or step == schedule.steps - 1:
            point = {"step": step, "loss": round(loss.item(), 4), "lr": schedule.lr_at(step)}
            if step % 500 == 0:  # eager, so the compiled graph is not re-traced for another batch shape
                point["heldout_ppl"] = round(heldout_perplexity(raw, heldout_tokens, schedule.seq_len), 3)
            point["seconds"] = round(time.perf_counter() - start, 1)
            entry["curve"].append(point)
            print(f"{name} {point}", flush=True)
    synchronize(device)
    end = time.perf_counter()
    entry["train_seconds"] = round(end - start, 1)
    entry["tokens"] = tokens_seen
    if compiled_at is not None and end > compiled_at:
        entry["tokens_per_second"] = round((tokens_seen - tokens_at) / (end - compiled_at))
    raw.eval()
    entry["heldout_ppl_bf16_autocast"] = round(heldout_perplexity(raw, heldout_tokens, schedule.seq_len), 3)
    print(f"{name}: {json.dumps({k: v for k, v in entry.items() if k != 'curve'})}", flush=True)
    return raw


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so host timers measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def save_shards(model: LlamaForCausalLM, name: str, out: Path) -> None:
    """bf16 weights as <name>.partN.safetensors files of at most SHARD_BYTES each."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in model.hf_state_dict(torch.bfloat16).items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    for i, shard in enumerate(shards):
        save_file(shard, str(out / f"{name}.part{i}.safetensors"), metadata={"format": "pt"})


def main(argv: list[str] | None = None) -> int:
    """Train demo, then demo-draft distilled from it, and save both."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(".train"), help="folder with token files and assets/")
    parser.add_argument("--out", type=Path, required=True, help="where the shards and train_log.json go")
    parser.add_argument("--demo-steps", type=int, default=5000)
    parser.add_argument("--draft-steps", type=int, default=1800)
    parser.add_argument("--batch", type=int, default=32, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--smoke", action="store_true", help="a few steps of each, to time and check the setup")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a quick check of the script")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="run eagerly")
    args = parser.parse_args(argv)
    if args.smoke:
        args.demo_steps, args.draft_steps = 60, 40

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    data = tuple(load_tokens(args.data / f"{split}_tokens.npy.xz", device) for split in ("train", "heldout"))
    configs = {n: json.loads((args.data / "assets" / n / "config.json").read_text()) for n in ("demo", "demo-draft")}
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "none"
    command = " ".join(["python", "tools/train_demo.py", *(sys.argv[1:] if argv is None else argv)])
    log: dict = {"command": command, "gpu": gpu}
    log["torch"], log["train_tokens"] = torch.__version__, int(data[0].numel())
    wall = time.perf_counter()

    demo_schedule = Schedule(args.demo_steps, args.batch, args.seq_len, lr=2e-3, warmup=min(200, args.demo_steps // 5))
    demo = train("demo", configs["demo"], demo_schedule, data, None, log, args.compile)
    save_shards(demo, "demo", args.out)
    teacher = demo.to(torch.bfloat16).eval()
    teacher = torch.compile(teacher) if args.compile else teacher
    draft_schedule = Schedule(
        args.draft_steps, args.batch, args.seq_len, lr=3e-3, warmup=min(200, args.draft_steps // 5), distill=0.7
    )
    draft = train("demo-draft", configs["demo-draft"], draft_schedule, data, teacher, log, args.compile)
    save_shards(draft, "demo-draft", args.out)

    log["wall_seconds"] = round(time.perf_counter() - wall, 1)
    (args.out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    print(f"done in {log['wall_seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
