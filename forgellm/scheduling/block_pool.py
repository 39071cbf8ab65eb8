"""BlockPool: the KV-cache blocks, their reference counts, and the prefix-cache index."""

from __future__ import annotations

from collections import OrderedDict


class BlockPool:
    """Owns every block id: in use (ref count > 0), free, or cached-but-evictable (ref count 0).

    A block with ref count 0 is either plain free (no hash) or evictable: still registered under its
    hash so a later request can reuse it, and recycled least-recently-freed first when free blocks run out.
    """

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self._ref_counts = [0] * num_blocks
        # A stack popped from the end; reversed so the first allocations get ids 0, 1, 2, ...
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        # Insertion order is release order, so the first entry is the least recently used.
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._hash_of_block: list[int | None] = [None] * num_blocks
        self._block_of_hash: dict[int, int] = {}

    @property
    def num_free_blocks(self) -> int:
        """Blocks that an allocation can take: plain free plus evictable cached ones."""
        return len(self._free) + len(self._evictable)

    @property
    def num_cached_blocks(self) -> int:
        """Blocks currently registered in the prefix cache (in use or evictable)."""
        return len(self._block_of_hash)

    def ref_count(self, block_id: int) -> int:
        """How many requests hold `block_id`."""
        return self._ref_counts[block_id]

    def is_evictable(self, block_id: int) -> bool:
        """True for a cached block that no request holds."""
        return block_id in self._evictable

    def block_hash(self, block_id: int) -> int | None:
        """The prefix-cache key `block_id` is registered under, or None."""
        return self._hash_of_block[block_id]

    def lookup(self, block_hash: int) -> int | None:
        """The cached block holding the K/V of the block keyed `block_hash`, or None."""
        return self._block_of_hash.get(block_hash)

    def take(self, block_ids: list[int]) -> None:
        """Add a reference to each of `block_ids` (cached blocks found by a lookup)."""
        refs = self._ref_counts
        for block_id in block_ids:
            if refs[block_id] == 0:
                del self._evictable[block_id]
            refs[block_id] += 1

    def allocate(self, count: int) -> list[int]:
        """Take `count` fresh blocks (ref count 1); the caller checked `num_free_blocks` first."""
        if count > self.num_free_blocks:
            raise RuntimeError(f"asked for {count} blocks with only {self.num_free_blocks} free")
        refs = self._ref_counts
        blocks = []
        for _ in range(count):
            if self._free:
                block_id = self._free.pop()
            else:
                block_id, _ = self._evictable.popitem(last=False)
                del self._block_of_hash[self._hash_of_block[block_id]]
                self._hash_of_block[block_id] = None
            refs[block_id] = 1
            blocks.append(block_id)
        return blocks

    def release(self, block_ids: list[int], uncache: bool = False) -> None:
        """Drop one reference from each block, in the given order (earlier ones are evicted first).

        With `uncache`, a block no longer held by anyone also leaves the prefix cache.
        """
        refs = self._ref_counts
        for block_id in block_ids:
            refs[block_id] -= 1
            if refs[block_id] == 0:
                block_hash = self._hash_of_block[block_id]
                if block_hash is not None and uncache:
                    del self._block_of_hash[block_hash]
                    self._hash_of_block[block_id] = block_hash = None
                if block_hash is None:
                    self._free.append(block_id)
                else:
                    self._evictable[block_id] = None

    def cache(self, block_id: int, block_hash: int) -> None:
        """Register a full, computed block under `block_hash`, unless that key is already cached."""
        # Two requests can compute the same block at once; the first one keeps the key and the
        # duplicate stays uncached, so it returns to the free list when released.
        if block_hash in self._block_of_hash or self._hash_of_block[block_id] is not None:
            return
        self._block_of_hash[block_hash] = block_id
        self._hash_of_block[block_id] = block_hash

    def reset_cache(self) -> None:
        """Forget every cached key; evictable blocks become plain free, blocks in use stay in use."""
        for block_id in self._block_of_hash.values():
            self._hash_of_block[block_id] = None
        self._block_of_hash.clear()
        self._free.extend(self._evictable)
        self._evictable.clear()
