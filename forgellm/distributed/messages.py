"""Rank 0's messages to the other ranks (a step's batch, the KV-cache size, stop), on a group of their own.

A worker waits for the next message as long as the engine idles, so that wait cannot carry the collective
timeout (`distributed_timeout_s`), which would end an idle engine's workers after two minutes. The messages
therefore travel on a gloo group whose timeout is practically unbounded, and rank 0 bounds its own side
instead: a rank that does not take a message within the timeout is reported hung. A worker whose rank 0
died sees the connection close at once. Within a step, the forward pass's collectives keep the default
group and its timeout. On GPUs the pickles stay on the host (gloo), never a round trip through device memory.
"""

from __future__ import annotations

import datetime
import pickle
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

IDLE_TIMEOUT = datetime.timedelta(days=365)


def message_group() -> Any:
    """The gloo group over every rank that carries rank 0's messages (every rank calls it, in the same order)."""
    return dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)


def send_message(value: Any, group: Any, timeout: datetime.timedelta) -> None:
    """Rank 0: pickle `value` to every other rank; a RuntimeError when one has not taken it within `timeout`."""
    post_message(value, group).wait(timeout)


@dataclass
class PostedMessage:
    """A message rank 0 has handed to gloo without waiting for the other ranks to take it (they may be busy with
    an earlier step: a pipeline's later stages); its buffers live until `wait`."""

    works: list[Any]
    buffers: list[torch.Tensor]

    def wait(self, timeout: datetime.timedelta) -> None:
        """Until every rank has taken it; a RuntimeError when one has not within `timeout`."""
        for work in self.works:
            work.wait(timeout)
        self.works, self.buffers = [], []


def post_message(value: Any, group: Any) -> PostedMessage:
    """Rank 0: start sending `value` to every other rank and return at once (gloo's broadcast otherwise blocks
    until every receiver has posted its receive)."""
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    size = torch.tensor([len(payload)], dtype=torch.int64)
    data = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    works = [dist.broadcast(tensor, src=0, group=group, async_op=True) for tensor in (size, data)]
    return PostedMessage(works, [size, data])


def receive_message(group: Any) -> Any:
    """A worker: the next message from rank 0, however long it takes to come."""
    size = torch.empty(1, dtype=torch.int64)
    dist.broadcast(size, src=0, group=group)
    data = torch.empty(int(size[0]), dtype=torch.uint8)
    dist.broadcast(data, src=0, group=group)
    return pickle.loads(data.numpy().tobytes())
