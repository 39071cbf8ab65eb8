"""Heartbeats name the rank a collective timeout is waiting for, from counts alone (no processes needed)."""

from __future__ import annotations

from forgellm.distributed.heartbeat import Heartbeats


def counts(world: int, picked: list[int], entered: list[int], finished: list[int]) -> Heartbeats:
    beats = Heartbeats.create(world)
    beats.counts[0], beats.counts[1], beats.counts[2] = picked, entered, finished
    return beats


def test_a_rank_behind_its_peers_in_collectives_is_named() -> None:
    beats = counts(4, [5] * 4, [40, 40, 39, 40], [4] * 4)
    assert beats.stuck_inside_forward(tp_size=4, pp_size=1) == (
        "rank 2 (entered 39 of 40 collectives): stuck inside forward pass 5 while its peers wait in the next collective"
    )
    beats.close(remove=True)


def test_the_first_stage_that_did_not_finish_is_the_one_named() -> None:
    # TP=2 x PP=2: stage 0 (ranks 0, 1) finished step 5; stage 1 (ranks 2, 3) did not, rank 3 behind rank 2.
    beats = counts(4, [5] * 4, [50, 50, 49, 48], [5, 5, 4, 4])
    assert beats.stuck_inside_forward(tp_size=2, pp_size=2).startswith(
        "rank 3 (stage 1, entered 48 of 49 collectives): stuck inside forward pass 5"
    )
    # Both inside one collective: the stage is named, and why counts cannot tell more.
    beats.counts[1] = [50, 50, 49, 49]
    assert "ranks 2, 3 (stage 1, all inside collective 49 of forward pass 5" in beats.stuck_inside_forward(2, 2)
    # PP without TP: the stage's one rank.
    single = counts(2, [3, 3], [0, 0], [3, 2])
    assert single.stuck_inside_forward(1, 2) == "rank 1 (stage 1, its part of forward pass 3 never finished)"
    beats.close(remove=True)
    single.close(remove=True)


def test_equal_counts_name_nobody() -> None:
    """Every rank as far as the others (e.g. a step's message lost between passes): no rank is blamed."""
    beats = counts(2, [7, 7], [30, 30], [6, 6])
    assert beats.stuck_inside_forward(2, 1) is None
    beats.close(remove=True)
