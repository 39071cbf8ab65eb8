"""Unit tests of KVCacheManager and its block pool: allocation, prefix hashing, ref counts, eviction."""

from __future__ import annotations

import pytest

from forgellm.engine.request import Request
from forgellm.sampling_params import SamplingParams
from forgellm.scheduling.block_hash import ROOT_BLOCK_HASH, extend_block_hashes, hash_block_tokens
from forgellm.scheduling.kv_cache import KVCacheManager


def make_request(request_id: str, prompt: list[int], **params) -> Request:
    return Request(request_id, list(prompt), SamplingParams(**params), max_tokens=16)


def compute(kv: KVCacheManager, request: Request, num_new_tokens: int) -> list[int]:
    """Allocate and pretend the model computed `num_new_tokens` more tokens, as the scheduler does."""
    blocks, _ = kv.get_computed_blocks(request) if request.num_computed_tokens == 0 else ([], 0)
    new = kv.allocate_slots(request, num_new_tokens - len(blocks) * kv.block_size, blocks)
    assert new is not None
    request.num_computed_tokens += num_new_tokens - len(blocks) * kv.block_size
    kv.cache_full_blocks(request, request.num_computed_tokens)
    return new


def test_allocate_uses_free_list_in_order_and_free_returns_blocks():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    request = make_request("a", range(10))
    assert kv.allocate_slots(request, 10) == [0, 1, 2]
    assert kv.get_block_ids("a") == [0, 1, 2]
    assert kv.num_free_blocks == 5
    assert kv.usage == pytest.approx(3 / 8)
    request.num_computed_tokens = 10
    assert kv.allocate_slots(request, 2) == []  # 12 tokens still fit in 3 blocks
    assert kv.allocate_slots(request, 3) == [3]
    kv.free(request)
    assert kv.num_free_blocks == 8
    assert kv.get_block_ids("a") == []
    assert kv.usage == 0.0


def test_allocate_failure_changes_nothing():
    kv = KVCacheManager(num_blocks=4, block_size=4)
    first = make_request("a", range(12))
    compute(kv, first, 12)
    kv.free(first)  # its 3 full blocks stay cached and evictable
    second = make_request("b", list(range(12)) + [99] * 9)
    blocks, num_tokens = kv.get_computed_blocks(second)
    assert (len(blocks), num_tokens) == (3, 12)
    # 21 tokens need 6 blocks: 3 cached + 3 new, but only 1 block is neither free nor being reused.
    assert kv.allocate_slots(second, 9, blocks) is None
    assert second.num_computed_tokens == 0
    assert kv.get_block_ids("b") == []
    assert kv.num_free_blocks == 4
    assert all(kv.pool.is_evictable(b) and kv.pool.ref_count(b) == 0 for b in blocks)
    assert kv.allocate_slots(second, 4, blocks) is not None  # 16 tokens fit


def test_chained_hashes_depend_on_every_earlier_block():
    a, b, c = [], [], []
    extend_block_hashes(a, [1, 2, 3, 4, 5, 6, 7, 8], 2, 4)
    extend_block_hashes(b, [1, 2, 3, 4, 5, 6, 7, 8, 9], 2, 4)
    extend_block_hashes(c, [0, 2, 3, 4, 5, 6, 7, 8], 2, 4)
    assert a == b
    assert a[1] == hash_block_tokens(hash_block_tokens(ROOT_BLOCK_HASH, [1, 2, 3, 4]), [5, 6, 7, 8])
    assert c[0] != a[0] and c[1] != a[1]  # same second block, different first block
    extend_block_hashes(a, [1, 2, 3, 4, 5, 6, 7, 8], 2, 4)
    assert len(a) == 2  # already extended: nothing appended


def test_same_prefix_shares_blocks_with_reference_counts():
    kv = KVCacheManager(num_blocks=10, block_size=4)
    first = make_request("a", range(12))
    compute(kv, first, 12)
    second = make_request("b", list(range(12)) + [50, 51])
    blocks, num_tokens = kv.get_computed_blocks(second)
    assert blocks == [0, 1, 2] and num_tokens == 12
    assert kv.allocate_slots(second, 2, blocks) == [3]
    assert second.num_computed_tokens == 12  # allocate_slots counts the cached tokens
    assert kv.get_block_ids("b") == [0, 1, 2, 3]
    assert [kv.pool.ref_count(b) for b in range(4)] == [2, 2, 2, 1]
    kv.free(first)
    assert [kv.pool.ref_count(b) for b in range(4)] == [1, 1, 1, 1]
    assert kv.num_free_blocks == 6
    other = make_request("c", [7] + list(range(1, 12)) + [0])  # differs in the first block only
    assert kv.get_computed_blocks(other) == ([], 0)


def test_whole_prompt_cached_leaves_one_token_to_compute():
    kv = KVCacheManager(num_blocks=10, block_size=4)
    compute(kv, make_request("a", range(12)), 12)
    blocks, num_tokens = kv.get_computed_blocks(make_request("b", range(12)))
    assert blocks == [0, 1] and num_tokens == 8
    blocks, num_tokens = kv.get_computed_blocks(make_request("c", range(13)))
    assert blocks == [0, 1, 2] and num_tokens == 12


def test_prompt_logprobs_and_disabled_cache_bypass_lookup():
    kv = KVCacheManager(num_blocks=10, block_size=4)
    compute(kv, make_request("a", range(12)), 12)
    assert kv.get_computed_blocks(make_request("b", range(13), prompt_logprobs=1)) == ([], 0)
    off = KVCacheManager(num_blocks=10, block_size=4, enable_prefix_caching=False)
    compute(off, make_request("a", range(12)), 12)
    assert off.pool.num_cached_blocks == 0
    assert off.get_computed_blocks(make_request("b", range(13))) == ([], 0)
    assert off.prefix_cache_hit_rate == 0.0


def test_only_computed_full_blocks_are_cached():
    kv = KVCacheManager(num_blocks=10, block_size=4)
    request = make_request("a", range(10))
    assert kv.allocate_slots(request, 10) == [0, 1, 2]
    request.num_computed_tokens = 6
    kv.cache_full_blocks(request, 6)
    assert kv.pool.num_cached_blocks == 1 and len(request.block_hashes) == 1
    request.num_computed_tokens = 10
    kv.cache_full_blocks(request, 10)
    assert kv.pool.num_cached_blocks == 2


def test_eviction_is_lru_with_sequence_tails_first():
    kv = KVCacheManager(num_blocks=6, block_size=2)
    first, second = make_request("a", [1, 2, 3, 4]), make_request("b", [5, 6, 7, 8])
    assert compute(kv, first, 4) == [0, 1]
    assert compute(kv, second, 4) == [2, 3]
    kv.free(first)
    kv.free(second)
    assert kv.num_free_blocks == 6 and kv.pool.num_cached_blocks == 4
    # Plain free blocks go first, then a's tail (1), a's head (0), then b's tail (3).
    third = make_request("c", [9] * 10)
    assert kv.allocate_slots(third, 10) == [4, 5, 1, 0, 3]
    assert kv.get_computed_blocks(make_request("a2", [1, 2, 3, 4, 0])) == ([], 0)
    assert kv.get_computed_blocks(make_request("b2", [5, 6, 7, 8, 0])) == ([2], 2)


def test_hit_on_evictable_block_protects_it_from_eviction():
    kv = KVCacheManager(num_blocks=4, block_size=2)
    first = make_request("a", [1, 2, 3, 4])
    compute(kv, first, 4)
    kv.free(first)
    second = make_request("b", [1, 2, 3])
    blocks, _ = kv.get_computed_blocks(second)
    assert blocks == [0]
    assert kv.allocate_slots(second, 1, blocks) == [2]
    assert kv.pool.ref_count(0) == 1 and not kv.pool.is_evictable(0)
    third = make_request("c", [9, 9, 9, 9])
    assert kv.allocate_slots(third, 4) == [3, 1]  # block 0 is held, so a's tail goes instead
    assert kv.allocate_slots(make_request("d", [5]), 1) is None


def test_duplicate_block_computed_twice_is_cached_once():
    kv = KVCacheManager(num_blocks=6, block_size=2)
    first, second = make_request("a", [1, 2, 3]), make_request("b", [1, 2, 3])
    compute(kv, first, 3)
    assert kv.allocate_slots(second, 3) == [2, 3]  # no lookup: both compute block [1, 2]
    second.num_computed_tokens = 3
    kv.cache_full_blocks(second, 3)
    assert kv.pool.block_hash(2) is None and kv.pool.block_hash(0) is not None
    kv.free(second)
    kv.free(first)
    assert kv.pool.num_cached_blocks == 1 and kv.num_free_blocks == 6


def test_hit_rate_and_reset_prefix_cache():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    first = make_request("a", range(8))
    compute(kv, first, 8)
    kv.free(first)
    blocks, num_tokens = kv.get_computed_blocks(make_request("b", range(9)))
    assert num_tokens == 8
    assert kv.prefix_cache_hit_rate == pytest.approx(8 / (8 + 9))
    kv.reset_prefix_cache()
    assert kv.pool.num_cached_blocks == 0 and kv.num_free_blocks == 8
    assert kv.get_computed_blocks(make_request("c", range(9))) == ([], 0)


def test_computed_blocks_only_on_first_allocation():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    compute(kv, make_request("a", range(8)), 8)
    second = make_request("b", range(9))
    kv.allocate_slots(second, 1)
    with pytest.raises(ValueError):
        kv.allocate_slots(second, 1, [0])
