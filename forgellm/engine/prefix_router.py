"""PrefixRouter: data parallelism's choice of replica for a request, aware of shared prompt beginnings.

Each replica has its own prefix cache, so a request whose prompt starts like an earlier one (a system
prompt, a document asked several questions) is fastest on the replica that served that earlier one. The
router remembers, for the leading chunks of every prompt it routed (chained hashes of 16-token or 64-
character chunks; no tokenizing here), which replica got it, and sends a request to the replica holding its
longest remembered beginning, unless that replica is busier than the least-loaded one by more than `slack`
requests (then load wins). It remembers what it sent, not what each cache still holds: an evicted prefix
only costs a recompute.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

CHUNK_TOKENS = 16
CHUNK_CHARS = 64


class PrefixRouter:
    """Picks a replica per request: its remembered prefix's replica within `slack`, else the least loaded."""

    def __init__(self, num_replicas: int, slack: int = 8, max_chunks: int = 64, max_entries: int = 1 << 16) -> None:
        self.num_replicas = num_replicas
        self.slack = slack
        self.max_chunks = max_chunks
        self.max_entries = max_entries
        self._owner: OrderedDict[int, int] = OrderedDict()  # chained chunk hash -> replica, oldest first
        self.prefix_hits = 0  # requests sent to a replica because it served their beginning

    def choose(self, prompt: Any, loads: Sequence[int], routed: Sequence[int]) -> int:
        """The replica for `prompt` given each replica's load (live + waiting requests) and requests routed."""
        keys = prefix_keys(prompt, self.max_chunks)
        least = min(range(len(loads)), key=lambda i: (loads[i], routed[i]))
        choice = least
        for key in reversed(keys):  # the longest remembered beginning first
            owner = self._owner.get(key)
            if owner is not None:
                if loads[owner] <= loads[least] + self.slack:
                    choice = owner
                    self.prefix_hits += owner != least
                break
        for key in keys:
            self._owner[key] = choice
            self._owner.move_to_end(key)
        while len(self._owner) > self.max_entries:
            self._owner.popitem(last=False)
        return choice


def prefix_keys(prompt: Any, max_chunks: int) -> list[int]:
    """Chained hashes of the prompt's leading whole chunks: 16 token ids, or 64 characters of text."""
    items: Sequence[Any]
    ids = getattr(prompt, "prompt_token_ids", None)  # a ProcessedPrompt
    if ids is None and isinstance(prompt, Mapping):
        ids = prompt.get("prompt_token_ids")
        if ids is None:
            prompt = prompt.get("prompt", "")
    if ids is not None:
        items, size = ids, CHUNK_TOKENS
    elif isinstance(prompt, str):
        items, size = prompt, CHUNK_CHARS
    else:
        return []
    keys, key = [], 0
    for start in range(0, min(len(items) // size, max_chunks) * size, size):
        chunk = items[start : start + size]
        key = hash((key, chunk if isinstance(chunk, str) else tuple(chunk)))
        keys.append(key)
    return keys
