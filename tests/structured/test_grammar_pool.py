"""GrammarPool's scheduling of per-grammar work, checked with plain Python objects (no xgrammar needed)."""

from __future__ import annotations

import threading

import pytest

from forgellm.structured.grammar_pool import GrammarPool


class Owner:
    """Stands for a grammar: records which thread touched it, in what order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []


def first(owner: Owner, value: int) -> None:
    owner.events.append(("first", threading.current_thread().name))


def then(owner: Owner, row: int) -> None:
    owner.events.append(("then", threading.current_thread().name))


@pytest.mark.parametrize("threads", [1, 3, 8])
def test_map_then_runs_each_owners_first_item_before_its_then_item_on_one_thread(threads):
    pool = GrammarPool("threads", threads=threads, min_rows_per_thread=1)
    owners = [Owner() for _ in range(20)]
    # The second phase in another order, and with owners the first phase never saw.
    extra = [Owner() for _ in range(3)]
    then_items = [(owner, row) for row, owner in reversed(list(enumerate(owners + extra)))]
    first_wait, all_wait = pool.map_then_async(first, [(owner, i) for i, owner in enumerate(owners)], then, then_items)
    first_wait()
    assert all(owner.events and owner.events[0][0] == "first" for owner in owners)
    all_wait()
    for owner in owners:
        assert [kind for kind, _ in owner.events] == ["first", "then"]
        assert owner.events[0][1] == owner.events[1][1]  # one thread per owner
    assert all([kind for kind, _ in owner.events] == ["then"] for owner in extra)


def test_map_then_raises_from_the_first_phase_wait_and_skips_that_slices_second_phase():
    pool = GrammarPool("threads", threads=2, min_rows_per_thread=1)
    owners = [Owner() for _ in range(4)]

    def failing_first(owner: Owner, value: int) -> None:
        if value == 2:
            raise ValueError("grammar broke")
        first(owner, value)

    first_wait, all_wait = pool.map_then_async(
        failing_first,
        [(owner, i) for i, owner in enumerate(owners)],
        then,
        [(owner, row) for row, owner in enumerate(owners)],
    )
    with pytest.raises(ValueError, match="grammar broke"):
        first_wait()
    with pytest.raises(ValueError, match="grammar broke"):
        all_wait()
    # Owners 0 and 2 share the failing slice: 2 never ran and nobody in that slice reached the second phase.
    assert owners[2].events == [] and [k for k, _ in owners[0].events] == ["first"]
    assert [k for k, _ in owners[1].events] == ["first", "then"]


def test_map_then_below_two_slices_runs_the_first_phase_on_the_calling_thread():
    pool = GrammarPool("threads", threads=8, min_rows_per_thread=4)
    owners = [Owner() for _ in range(3)]
    first_wait, all_wait = pool.map_then_async(
        first, [(owner, 0) for owner in owners], then, [(owner, i) for i, owner in enumerate(owners)]
    )
    first_wait()
    all_wait()
    here = threading.current_thread().name
    assert all(owner.events == [("first", here), ("then", here)] for owner in owners)
