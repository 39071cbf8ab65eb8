"""Block hashes with extra keys: an image's content hash enters exactly the blocks holding its tokens, and
(chained) every block after them; blocks before it keep the hashes of plain text."""

from __future__ import annotations

from forgellm.scheduling.block_hash import extend_block_hashes


def hashes(tokens: list[int], spans: list[tuple[int, int, int]]) -> list[int]:
    out: list[int] = []
    extend_block_hashes(out, tokens, len(tokens) // 4, 4, spans)
    return out


def test_an_image_changes_the_blocks_from_its_first_token_on() -> None:
    tokens = list(range(24))  # 6 blocks of 4
    plain = hashes(tokens, [])
    one = hashes(tokens, [(9, 15, 111)])  # tokens 9..14: blocks 2 and 3
    other = hashes(tokens, [(9, 15, 222)])
    assert one[:2] == plain[:2] == other[:2]
    assert all(a != b for a, b in zip(one[2:], plain[2:])) and all(a != b for a, b in zip(one[2:], other[2:]))
    assert hashes(tokens, [(9, 15, 111)]) == one  # deterministic


def test_hashing_in_steps_equals_hashing_at_once() -> None:
    tokens, spans = list(range(40)), [(3, 7, 5), (20, 33, 6)]
    stepwise: list[int] = []
    for full in (2, 5, 10):
        extend_block_hashes(stepwise, tokens, full, 4, spans)
    assert stepwise == hashes(tokens, spans)
