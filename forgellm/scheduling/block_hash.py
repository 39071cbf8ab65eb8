"""Chained hashes of full KV-cache blocks: the keys of the prefix cache."""

from __future__ import annotations

import hashlib
from array import array

# Parent of a sequence's first block. Any fixed value works; zero keeps hashes equal across processes.
ROOT_BLOCK_HASH = 0
_HASH_BYTES = 32


def hash_block_tokens(parent_hash: int, token_ids: list[int], extra_keys: tuple[int, ...] = ()) -> int:
    """Hash one full block from its parent block's hash, its token ids and extra keys (the content hashes of
    images whose tokens it holds), SHA-256, as an int."""
    # SHA-256 rather than Python's hash(): tuple hashes of ints are predictable, so a crafted prompt
    # could collide with another user's prefix and read or poison its cached K/V. It costs ~1 us per
    # block, and only newly full blocks are hashed.
    digest = hashlib.sha256(parent_hash.to_bytes(_HASH_BYTES, "little"))
    digest.update(array("q", token_ids).tobytes())
    for key in extra_keys:  # an image's placeholder ids are all alike: its content tells images apart
        digest.update(key.to_bytes(_HASH_BYTES, "little"))
    return int.from_bytes(digest.digest(), "little")


def extend_block_hashes(
    block_hashes: list[int],
    token_ids: list[int],
    num_full_blocks: int,
    block_size: int,
    extra_spans: list[tuple[int, int, int]] = (),  # type: ignore[assignment]
) -> None:
    """Append the hashes of blocks `len(block_hashes) .. num_full_blocks-1` of `token_ids`, in place;
    `extra_spans` are (first token, end, key): a block holding any of a span's tokens mixes in its key."""
    parent = block_hashes[-1] if block_hashes else ROOT_BLOCK_HASH
    for index in range(len(block_hashes), num_full_blocks):
        start = index * block_size
        end = start + block_size
        extra = tuple(key for first, last, key in extra_spans if first < end and last > start)
        parent = hash_block_tokens(parent, token_ids[start:end], extra)
        block_hashes.append(parent)
