"""Rank 0's messages (forgellm/distributed/messages.py): they arrive intact however long the wait between them,
and a worker whose rank 0 died learns it at once (its wait has no timeout, so nothing else would end it)."""

from __future__ import annotations

import multiprocessing
import os
import time

import torch.distributed as dist

from forgellm.distributed.messages import message_group, receive_message, send_message
from tests.serve.http_helpers import free_port

TIMEOUT_S = 5.0


def _rank0(port: int, die: bool) -> None:
    import datetime

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=2,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))  # fmt: skip
    group = message_group()
    send_message({"step": 1, "ids": list(range(1000))}, group, datetime.timedelta(seconds=TIMEOUT_S))
    time.sleep(2 * TIMEOUT_S if not die else 0.5)  # idle longer than the collective timeout
    if die:
        os._exit(1)  # no goodbye: a crash
    send_message(None, group, datetime.timedelta(seconds=TIMEOUT_S))
    dist.destroy_process_group()


def _rank1(port: int, results: multiprocessing.Queue) -> None:
    import datetime

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=1, world_size=2,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))  # fmt: skip
    group = message_group()
    first = receive_message(group)
    started = time.monotonic()
    try:
        second = receive_message(group)
        results.put((first, "received", second, time.monotonic() - started))
    except RuntimeError as exc:
        results.put((first, "raised", str(exc)[:200], time.monotonic() - started))


def run_pair(die: bool) -> tuple:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = free_port()
    ranks = [context.Process(target=_rank0, args=(port, die)), context.Process(target=_rank1, args=(port, results))]
    for rank in ranks:
        rank.start()
    try:
        return results.get(timeout=120)
    finally:
        for rank in ranks:
            rank.join(timeout=30)
            if rank.is_alive():
                rank.kill()


def test_a_message_after_an_idle_longer_than_the_timeout_arrives() -> None:
    first, outcome, second, waited = run_pair(die=False)
    assert first == {"step": 1, "ids": list(range(1000))}
    assert outcome == "received" and second is None
    assert waited > TIMEOUT_S  # it did wait out the collective timeout


def test_a_worker_whose_rank_0_died_stops_waiting_at_once() -> None:
    first, outcome, _, waited = run_pair(die=True)
    assert first["step"] == 1
    assert outcome == "raised"
    assert waited < 60  # the closed connection, not the message group's year-long timeout
