"""Waiting queues of the scheduler: first come first served, or by (priority, arrival time)."""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterator
from typing import Protocol

from forgellm.engine.request import Request
from forgellm.errors import ConfigError


class RequestQueue(Protocol):
    """The order in which waiting requests are admitted."""

    def add(self, request: Request) -> None:
        """Queue a newly arrived request."""

    def push_front(self, request: Request) -> None:
        """Return a request ahead of new arrivals (preempted, or looked at but not admitted)."""

    def pop(self) -> Request:
        """Remove and return the next request to admit."""

    def remove(self, request: Request) -> None:
        """Remove a queued request (an abort)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Request]: ...


class FcfsQueue:
    """Arrival order; preempted requests go back to the front."""

    def __init__(self) -> None:
        self._queue: deque[Request] = deque()

    def add(self, request: Request) -> None:
        """Queue at the back."""
        self._queue.append(request)

    def push_front(self, request: Request) -> None:
        """Queue at the front."""
        self._queue.appendleft(request)

    def pop(self) -> Request:
        """Take the front request."""
        return self._queue.popleft()

    def remove(self, request: Request) -> None:
        """Remove `request` (O(n); aborts are rare)."""
        self._queue.remove(request)

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._queue)


class PriorityQueue:
    """Lowest (priority, arrival_time) first; ties in arrival order."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, float, int, Request]] = []
        self._counter = itertools.count()

    def add(self, request: Request) -> None:
        """Queue by (priority, arrival_time)."""
        heapq.heappush(self._heap, (request.priority, request.arrival_time, next(self._counter), request))

    def push_front(self, request: Request) -> None:
        """Same as add: the key, not the push order, decides who is in front."""
        self.add(request)

    def pop(self) -> Request:
        """Take the most important request."""
        return heapq.heappop(self._heap)[-1]

    def remove(self, request: Request) -> None:
        """Remove `request` (O(n); aborts are rare)."""
        self._heap = [entry for entry in self._heap if entry[-1] is not request]
        heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[Request]:
        return (entry[-1] for entry in sorted(self._heap, key=lambda entry: entry[:3]))


def make_request_queue(policy: str) -> RequestQueue:
    """The waiting queue of a scheduling policy: "fcfs" or "priority"."""
    if policy == "fcfs":
        return FcfsQueue()
    if policy == "priority":
        return PriorityQueue()
    raise ConfigError(f"scheduling policy must be 'fcfs' or 'priority', got {policy!r}")
