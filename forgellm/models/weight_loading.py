"""Mapping checkpoint tensor names onto (possibly fused or sharded) model parameters."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from forgellm.errors import ModelLoadError


class Loadable(Protocol):
    """A module that knows how to copy a full checkpoint tensor into (its slice of) a parameter."""

    def load(self, param_name: str, loaded: torch.Tensor, shard: str | int | None, ckpt_name: str) -> None: ...


@dataclass
class WeightMap:
    """Checkpoint name -> where it goes. Names listed as ignored may appear without being used."""

    targets: dict[str, tuple[Loadable, str, str | int | None]] = field(default_factory=dict)
    ignored: set[str] = field(default_factory=set)
    ignored_suffixes: tuple[str, ...] = ()

    def add(self, name: str, module: Loadable, param_name: str, shard: str | int | None = None) -> None:
        self.targets[name] = (module, param_name, shard)

    def ignore(self, name: str) -> None:
        self.ignored.add(name)

    def is_ignored(self, name: str) -> bool:
        return name in self.ignored or name.endswith(self.ignored_suffixes)


def _name_list(names: Iterable[str], limit: int = 8) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


@torch.no_grad()
def load_weights(wmap: WeightMap, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Copy every checkpoint tensor to its target; reject unknown tensors and report missing ones."""
    loaded: set[str] = set()
    unexpected: list[str] = []
    for name, tensor in weights:
        target = wmap.targets.get(name)
        if target is None:
            if not wmap.is_ignored(name):
                unexpected.append(name)
            continue
        module, param_name, shard = target
        module.load(param_name, tensor, shard, name)
        loaded.add(name)
    if unexpected:
        raise ModelLoadError(
            f"the checkpoint has tensors this model does not use: {_name_list(unexpected)}; "
            "is config.json's architecture the checkpoint's?"
        )
    missing = set(wmap.targets) - loaded
    if missing:
        raise ModelLoadError(f"the checkpoint lacks tensors the model needs: {_name_list(missing)}")
