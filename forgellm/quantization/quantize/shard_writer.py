"""Writes a checkpoint's tensors into safetensors shards as they come, with the index file."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

SHARD_BYTES = 4 * 2**30


class ShardWriter:
    """Writes tensors into safetensors shards of about SHARD_BYTES as they come (one shard in memory), then
    names them model-0000i-of-0000n and writes the index; a single shard becomes model.safetensors."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.pending: dict[str, torch.Tensor] = {}
        self.files: list[Path] = []
        self.weight_map: dict[str, int] = {}  # tensor name -> shard number
        self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if self.pending and sum(t.nbytes for t in self.pending.values()) + tensor.nbytes > SHARD_BYTES:
            self._flush()
        self.pending[name] = tensor.contiguous()
        self.total += tensor.nbytes

    def _flush(self) -> None:
        path = self.out / f".shard-{len(self.files):05d}.tmp"
        save_file(self.pending, str(path), metadata={"format": "pt"})
        self.weight_map.update(dict.fromkeys(self.pending, len(self.files)))
        self.files.append(path)
        self.pending = {}

    def close(self) -> None:
        self._flush()
        if len(self.files) == 1:
            self.files[0].rename(self.out / "model.safetensors")
            return
        names = [f"model-{i:05d}-of-{len(self.files):05d}.safetensors" for i in range(1, len(self.files) + 1)]
        for path, name in zip(self.files, names):
            path.rename(self.out / name)
        index = {
            "metadata": {"total_size": self.total},
            "weight_map": {k: names[v] for k, v in self.weight_map.items()},
        }
        (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
