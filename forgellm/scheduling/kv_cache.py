"""KVCacheManager: paged KV-cache blocks per request, with prefix caching."""

from __future__ import annotations

from collections.abc import Sequence

from forgellm.engine.request import Request
from forgellm.scheduling.block_hash import extend_block_hashes
from forgellm.scheduling.block_pool import BlockPool


class KVCacheManager:
    """Maps each request to a block table of fixed-size blocks and shares full blocks by prefix hash.

    Ownership of `request.num_computed_tokens`: `allocate_slots` adds the tokens covered by the cached
    blocks it is given (a prefix-cache hit); the scheduler adds the tokens computed by each step.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks)
        self._block_tables: dict[str, list[int]] = {}
        # How many leading blocks of each table are already registered in the prefix cache, so
        # cache_full_blocks only ever looks at newly full blocks.
        self._num_registered: dict[str, int] = {}
        self._query_tokens = 0
        self._hit_tokens = 0

    @property
    def num_blocks(self) -> int:
        """Total number of blocks in the cache."""
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation can take: free plus evictable cached blocks."""
        return self.pool.num_free_blocks

    @property
    def usage(self) -> float:
        """Fraction of blocks held by requests, 0..1."""
        return 1.0 - self.pool.num_free_blocks / self.pool.num_blocks

    @property
    def prefix_cache_hit_rate(self) -> float:
        """Fraction of looked-up tokens found in the prefix cache since start (0 before any lookup)."""
        return self._hit_tokens / self._query_tokens if self._query_tokens else 0.0

    def get_block_ids(self, request_id: str) -> list[int]:
        """The request's block table (the manager's own list: read it, don't mutate it)."""
        return self._block_tables.get(request_id, [])

    def get_computed_blocks(self, request: Request) -> tuple[list[int], int]:
        """The cached blocks that prefix the request's tokens and the number of tokens they cover.

        At least one token is always left to compute (the model needs it to produce logits). Takes
        no references: pass the blocks to `allocate_slots` before anything else allocates.
        """
        if not self.enable_prefix_caching or request.sampling_params.prompt_logprobs is not None:
            return [], 0
        bs = self.block_size
        max_blocks = (request.num_tokens - 1) // bs
        extend_block_hashes(request.block_hashes, request.all_token_ids, max_blocks, bs, request.mm_hash_spans)
        blocks: list[int] = []
        lookup = self.pool.lookup
        for index in range(max_blocks):
            block_id = lookup(request.block_hashes[index])
            if block_id is None:
                break
            blocks.append(block_id)
        self._query_tokens += request.num_tokens
        self._hit_tokens += len(blocks) * bs
        return blocks, len(blocks) * bs

    def allocate_slots(
        self, request: Request, num_new_tokens: int, computed_blocks: Sequence[int] = ()
    ) -> list[int] | None:
        """Make room for `num_new_tokens` more tokens; return the new block ids, or None if short.

        `computed_blocks` (from `get_computed_blocks`) are passed only on a request's first allocation
        after (re)admission; this call then references them and advances `num_computed_tokens` past
        them. On None nothing has changed.
        """
        bs = self.block_size
        num_computed = request.num_computed_tokens + len(computed_blocks) * bs
        num_blocks_needed = -(-(num_computed + num_new_tokens) // bs)
        table = self._block_tables.get(request.request_id)
        num_held = len(table) if table is not None else 0
        if not computed_blocks:
            if num_blocks_needed <= num_held:  # the fast path of most decode steps
                return []
        elif num_held or request.num_computed_tokens:
            raise ValueError(f"request {request.request_id!r}: computed_blocks on a non-first allocation")
        num_new_blocks = max(num_blocks_needed - num_held - len(computed_blocks), 0)
        pool = self.pool
        # Evictable hits are counted as free but are about to be taken, not recycled.
        reused_free = sum(1 for block_id in computed_blocks if pool.ref_count(block_id) == 0)
        if num_new_blocks > pool.num_free_blocks - reused_free:
            return None
        if table is None:
            table = self._block_tables[request.request_id] = []
            self._num_registered[request.request_id] = 0
        if computed_blocks:
            pool.take(list(computed_blocks))
            table.extend(computed_blocks)
            self._num_registered[request.request_id] = len(computed_blocks)
            request.num_computed_tokens = num_computed
        new_blocks = pool.allocate(num_new_blocks)
        table.extend(new_blocks)
        return new_blocks

    def cache_full_blocks(self, request: Request, num_tokens: int) -> None:
        """Register in the prefix cache the blocks that are full within the first `num_tokens` tokens."""
        if not self.enable_prefix_caching:
            return
        num_full = num_tokens // self.block_size
        num_registered = self._num_registered.get(request.request_id)
        if num_registered is None or num_full <= num_registered:
            return
        table = self._block_tables[request.request_id]
        num_full = min(num_full, len(table))
        hashes = request.block_hashes
        extend_block_hashes(hashes, request.all_token_ids, num_full, self.block_size, request.mm_hash_spans)
        for index in range(num_registered, num_full):
            self.pool.cache(table[index], hashes[index])
        self._num_registered[request.request_id] = num_full

    def free(self, request: Request, uncache: bool = False) -> None:
        """Release the request's blocks; cached ones stay reusable until evicted, tail first.

        With `uncache` the blocks no other request holds leave the prefix cache (their K/V may be
        unwritten, e.g. after a failed step); blocks still shared were computed by someone else.
        """
        table = self._block_tables.pop(request.request_id, None)
        self._num_registered.pop(request.request_id, None)
        if table:
            self.pool.release(table[::-1], uncache=uncache)

    def reset_stats(self) -> None:
        """Zero the prefix-cache hit counters (e.g. after a start-up warm-up)."""
        self._query_tokens = 0
        self._hit_tokens = 0

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (e.g. after new weights are loaded); blocks in use stay held."""
        self.pool.reset_cache()
