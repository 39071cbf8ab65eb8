"""ResponseStore: the conversations of past responses, kept in memory for `previous_response_id`.

Bounded both ways so that a long-running server cannot grow without limit: at most `max_entries`
responses (the oldest go first) and none older than `ttl_s` seconds. Nothing survives a restart.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

Message = dict[str, str]


class ResponseStore:
    """Response id -> the conversation up to and including that response's answer."""

    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}")
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        # Insertion order is age order: expiry and eviction only ever look at the front.
        self._entries: OrderedDict[str, tuple[float, tuple[Message, ...]]] = OrderedDict()
        self._lock = threading.Lock()  # routes run on one loop, but tests and callers may not

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._entries)

    def put(self, response_id: str, conversation: list[Message]) -> None:
        """Remember `conversation` (copied) under `response_id`, evicting the oldest beyond the bound."""
        if self.max_entries == 0:
            return
        frozen = tuple(dict(m) for m in conversation)
        with self._lock:
            self._expire()
            self._entries[response_id] = (self._clock(), frozen)
            self._entries.move_to_end(response_id)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def get(self, response_id: str) -> list[Message] | None:
        """The conversation stored under `response_id` (a fresh list), or None if unknown or expired."""
        with self._lock:
            self._expire()
            entry = self._entries.get(response_id)
        return None if entry is None else [dict(m) for m in entry[1]]

    def _expire(self) -> None:
        cutoff = self._clock() - self.ttl_s
        while self._entries:
            stored_at, _ = next(iter(self._entries.values()))
            if stored_at > cutoff:
                break
            self._entries.popitem(last=False)
