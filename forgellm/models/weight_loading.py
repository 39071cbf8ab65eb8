"""Mapping checkpoint tensor names onto (possibly fused or sharded) model parameters."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

from forgellm.errors import ModelLoadError

if TYPE_CHECKING:
    from forgellm.layers.linear import LinearBase


class Loadable(Protocol):
    """A module that knows how to copy a full checkpoint tensor into (its slice of) a parameter."""

    def load(self, param_name: str, loaded: torch.Tensor, shard: str | int | None, ckpt_name: str) -> None: ...


@dataclass
class WeightMap:
    """Checkpoint name -> where it goes. Names listed as ignored may appear without being used."""

    targets: dict[str, tuple[Loadable, str, str | int | None]] = field(default_factory=dict)
    optional: set[str] = field(default_factory=set)  # targets a checkpoint may leave out
    ignored: set[str] = field(default_factory=set)
    ignored_suffixes: tuple[str, ...] = ()
    ignored_prefixes: tuple[str, ...] = ()  # e.g. other pipeline stages' layers

    def add(
        self, name: str, module: Loadable, param_name: str, shard: str | int | None = None, *, optional: bool = False
    ) -> None:
        self.targets[name] = (module, param_name, shard)
        if optional:
            self.optional.add(name)

    def add_linear(self, layer: LinearBase) -> None:
        """Every checkpoint tensor of a linear layer's parts: the names its LinearMethod asks for, and the bias."""
        wanted = layer.method.checkpoint_tensors()
        for part, prefix in enumerate(layer.part_names):
            for name in wanted.required:
                self.add(f"{prefix}.{name}", layer, name, part)
            for name in wanted.optional:
                self.add(f"{prefix}.{name}", layer, name, part, optional=True)
            if layer.bias is not None:
                self.add(f"{prefix}.bias", layer, "bias", part)

    def ignore(self, name: str) -> None:
        self.ignored.add(name)

    def is_ignored(self, name: str) -> bool:
        return name in self.ignored or name.endswith(self.ignored_suffixes) or name.startswith(self.ignored_prefixes)


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
    missing = set(wmap.targets) - loaded - wmap.optional
    if missing:
        raise ModelLoadError(f"the checkpoint lacks tensors the model needs: {_name_list(missing)}")
    finish_loading({id(module): module for module, _, _ in wmap.targets.values()}.values())


def finish_loading(modules: Iterable[object]) -> None:
    """Let every module that repacks its weights after loading (quantized linears) do so, once."""
    for module in modules:
        finish = getattr(module, "finish_loading", None)
        if finish is not None:
            finish()
