"""PrefixRouter: a prompt that begins like an earlier one goes to the replica that served it (token ids in
16-id chunks, text in 64-character chunks, the longest remembered beginning first) unless that replica is
busier than the least-loaded one by more than the slack; prompts shorter than a chunk, or new beginnings, go
to the least-loaded replica; the memory is bounded."""

from __future__ import annotations

from forgellm.engine.prefix_router import PrefixRouter, prefix_keys

DOC = "The quarterly report covers revenue, costs and the outlook for each region of the company. " * 3


def test_a_shared_beginning_goes_to_the_replica_that_served_it() -> None:
    router = PrefixRouter(2)
    assert router.choose(DOC + "Q1?", [0, 0], [0, 0]) == 0
    # Least-loaded alone would pick replica 1 (fewer routed): the shared document keeps replica 0.
    assert router.choose(DOC + "Q2?", [0, 0], [1, 0]) == 0
    assert (
        router.choose("Something else entirely, long enough to fill a chunk of sixty-four chars.", [0, 0], [2, 0]) == 1
    )
    assert router.prefix_hits == 1


def test_token_id_prompts_and_processed_prompts_share_keys() -> None:
    from types import SimpleNamespace

    ids = list(range(40))
    assert prefix_keys({"prompt_token_ids": ids}, 64) == prefix_keys(SimpleNamespace(prompt_token_ids=ids), 64)
    assert len(prefix_keys({"prompt_token_ids": ids}, 64)) == 2  # two whole 16-id chunks
    assert prefix_keys({"prompt_token_ids": ids[:15]}, 64) == []  # shorter than a chunk: nothing to remember
    assert prefix_keys([[1, 2, 3]], 64) == []  # an unknown prompt form routes by load only


def test_the_longest_remembered_beginning_wins_and_load_overrides_within_slack() -> None:
    router = PrefixRouter(3, slack=2)
    short, long = list(range(16)), list(range(48))
    assert router.choose({"prompt_token_ids": short}, [0, 0, 0], [0, 0, 0]) == 0
    assert router.choose({"prompt_token_ids": long}, [5, 0, 0], [1, 0, 0]) == 1  # replica 0 too busy: load wins
    # The 48-id prompt's 3 chunks now belong to replica 1; its first chunk too (it was re-recorded).
    assert router.choose({"prompt_token_ids": long + [7]}, [0, 2, 0], [1, 1, 0]) == 1  # within the slack
    assert router.choose({"prompt_token_ids": long + [7]}, [0, 3, 0], [1, 2, 0]) == 2  # beyond it: least loaded


def test_memory_is_bounded() -> None:
    router = PrefixRouter(2, max_entries=10)
    for i in range(50):
        router.choose({"prompt_token_ids": [i] * 32}, [0, 0], [0, 0])
    assert len(router._owner) == 10
