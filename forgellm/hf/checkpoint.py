"""Iterate the tensors of a safetensors checkpoint (single file or shards), memory-mapped.

Every shard is validated up front (present, header readable, long enough, holding the tensors its index
promises), so a broken download fails before any weight is copied. Pickle files are never opened.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from forgellm.errors import ModelLoadError
from forgellm.hf.config import read_json_file

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# Only plain floating tensors follow the requested dtype; integer and fp8 tensors are packed or
# quantized weights whose bits the quantization methods interpret themselves.
_CASTABLE = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# A header larger than this is not a real safetensors header (the format caps it at 100 MB).
_MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class CheckpointIndex:
    """Where each tensor lives: the shards in load order and tensor name -> shard path."""

    shards: tuple[Path, ...]
    weight_map: dict[str, Path]

    def names_in(self, shard: Path) -> list[str]:
        """The tensors this checkpoint reads from `shard`, in index order."""
        return [name for name, path in self.weight_map.items() if path == shard]


def load_checkpoint_index(model_dir: str | Path) -> CheckpointIndex:
    """Find and validate the safetensors files of `model_dir`; ModelLoadError names the bad file."""
    directory = Path(model_dir)
    if not directory.is_dir():
        raise ModelLoadError(f"model directory {directory} does not exist")
    single = directory / SINGLE_FILE
    if single.is_file():
        # As in transformers, a single-file checkpoint wins over an index next to it.
        names = read_safetensors_header_names(single)
        return CheckpointIndex(shards=(single,), weight_map=dict.fromkeys(names, single))
    index_path = directory / INDEX_FILE
    if index_path.is_file():
        return _load_sharded_index(index_path)
    raise ModelLoadError(_no_weights_message(directory))


def iter_checkpoint_tensors(
    model_dir: str | Path, dtype: torch.dtype | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(name, tensor)` for every tensor, shard by shard; floating tensors are cast to `dtype`.

    Every file is validated before this returns, so a broken checkpoint fails before any weight is read.
    """
    return _iter_tensors(load_checkpoint_index(model_dir), dtype)


def _iter_tensors(index: CheckpointIndex, dtype: torch.dtype | None) -> Iterator[tuple[str, torch.Tensor]]:
    for shard in index.shards:
        with safe_open(str(shard), framework="pt") as handle:
            for name in index.names_in(shard):
                tensor = handle.get_tensor(name)
                if dtype is not None and tensor.dtype in _CASTABLE and tensor.dtype != dtype:
                    tensor = tensor.to(dtype)
                yield name, tensor


def read_checkpoint_tensor(model_dir: str | Path, names: tuple[str, ...]) -> tuple[str, torch.Tensor] | None:
    """The first of `names` the checkpoint holds, read alone from its shard; None when it holds none."""
    index = load_checkpoint_index(model_dir)
    for name in names:
        shard = index.weight_map.get(name)
        if shard is not None:
            with safe_open(str(shard), framework="pt") as handle:
                return name, handle.get_tensor(name)
    return None


def read_safetensors_header_names(path: Path) -> list[str]:
    """Validate a safetensors file's header against its size and return its tensor names."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ModelLoadError(f"{path} is corrupt: {size} bytes is too short for a safetensors header")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > size - 8 or header_len > _MAX_HEADER_BYTES:
                raise ModelLoadError(f"{path} is corrupt: its header claims {header_len} bytes but the file has {size}")
            header_bytes = handle.read(header_len)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    try:
        header = json.loads(header_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path} is corrupt: its header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path} is corrupt: its header is not a JSON object")
    data_end = 0
    names = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ModelLoadError(f"{path} is corrupt: tensor '{name}' has no valid data_offsets")
        data_end = max(data_end, offsets[1])
        names.append(name)
    needed = 8 + header_len + data_end
    if size < needed:
        raise ModelLoadError(
            f"{path} is truncated: it has {size} bytes but its tensors need {needed}; download it again"
        )
    return names


def _load_sharded_index(index_path: Path) -> CheckpointIndex:
    index = read_json_file(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelLoadError(f"{index_path}: missing or empty 'weight_map'")
    directory = index_path.parent
    resolved: dict[str, Path] = {}
    for name, file_name in weight_map.items():
        if not isinstance(file_name, str) or Path(file_name).name != file_name:
            # Shards must sit next to the index; a path elsewhere is not ours to open.
            raise ModelLoadError(f"{index_path}: tensor '{name}' maps to an invalid shard name {file_name!r}")
        resolved[name] = directory / file_name
    shards = tuple(sorted(set(resolved.values())))
    for shard in shards:
        if not shard.is_file():
            raise ModelLoadError(f"shard {shard} named in {index_path} is missing; download it again")
        present = set(read_safetensors_header_names(shard))
        absent = sorted(name for name, path in resolved.items() if path == shard and name not in present)
        if absent:
            shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
            raise ModelLoadError(f"{index_path} lists tensor(s) {shown} in {shard}, but that shard lacks them")
    return CheckpointIndex(shards=shards, weight_map=resolved)


def _no_weights_message(directory: Path) -> str:
    if any(directory.glob("pytorch_model*.bin")) or any(directory.glob("*.pt")) or any(directory.glob("*.pth")):
        return (
            f"{directory} holds only pickle weights (pytorch_model*.bin / *.pt), which forgellm never loads "
            "because unpickling can run arbitrary code; convert them to safetensors first "
            "(e.g. load with transformers and save_pretrained(..., safe_serialization=True))"
        )
    stray = sorted(p.name for p in directory.glob("*.safetensors"))
    if stray:
        return f"{directory} has {stray} but neither {SINGLE_FILE} nor {INDEX_FILE} to say which tensors they hold"
    return f"no weights in {directory}: expected {SINGLE_FILE} or {INDEX_FILE} with its shards"
