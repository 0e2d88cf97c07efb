"""KVPool: slot allocation (exact ids), pages, debug-mode free checks, K/V storage, sizing."""

from __future__ import annotations

import pytest
import torch

from radixlm.config import ModelConfig
from radixlm.kvcache.pool import PAD_SLOT, KVPool, PoolError, PoolShape, tokens_for_budget

SHAPE = PoolShape(num_layers=2, num_kv_heads=2, head_dim=4, dtype=torch.float32)


def make_pool(total: int = 8, page_size: int = 1, debug: bool = True) -> KVPool:
    return KVPool(SHAPE, total, page_size=page_size, debug=debug)


def ids(t: torch.Tensor | None) -> list[int]:
    assert t is not None
    return t.tolist()


def test_fresh_pool_hands_out_slots_in_order_and_reserves_slot_zero():
    pool = make_pool(8)
    assert pool.total == 8 and pool.available_size() == 8
    assert pool.k_buffer.shape == (2, 9, 2, 4)  # 8 usable rows + the padding row
    assert ids(pool.alloc(3)) == [1, 2, 3]
    assert ids(pool.alloc(2)) == [4, 5]
    assert pool.available_size() == 3
    assert PAD_SLOT == 0


def test_alloc_returns_none_when_too_few_free_and_changes_nothing():
    pool = make_pool(4)
    assert pool.alloc(5) is None
    assert pool.available_size() == 4
    assert ids(pool.alloc(4)) == [1, 2, 3, 4]
    assert pool.alloc(1) is None
    assert ids(pool.alloc(0)) == []


def test_freed_block_is_reused_first_in_its_order():
    pool = make_pool(8)
    pool.alloc(3)
    middle = pool.alloc(3)
    pool.free(middle)
    assert pool.available_size() == 5
    assert ids(pool.alloc(3)) == [4, 5, 6]
    assert ids(pool.alloc(2)) == [7, 8]


def test_free_accepts_scattered_order():
    pool = make_pool(6)
    slots = pool.alloc(6)
    pool.free(slots[[4, 0, 2]])
    assert sorted(ids(pool.free_slots())) == [1, 3, 5]
    assert pool.available_size() == 3


def test_pages_allocate_whole_pages():
    pool = make_pool(16, page_size=4)
    assert pool.total == 16 and pool.k_buffer.shape[1] == 20  # page 0 reserved
    assert ids(pool.alloc(5)) == [4, 5, 6, 7, 8]  # pages 1 and 2; slot 9..11 reserved
    assert pool.available_size() == 8
    assert ids(pool.alloc(4)) == [12, 13, 14, 15]
    assert pool.alloc(5) is None  # needs two pages, one left


def test_pages_free_every_touched_page():
    pool = make_pool(16, page_size=4)
    a = pool.alloc(5)
    pool.free(a)
    assert pool.available_size() == 16
    assert sorted(ids(pool.free_page_ids())) == [1, 2, 3, 4]


@pytest.mark.parametrize("page_size", [1, 4])
def test_debug_detects_double_free(page_size):
    pool = make_pool(16, page_size=page_size)
    slots = pool.alloc(page_size)
    pool.free(slots)
    with pytest.raises(PoolError):
        pool.free(slots)


def test_debug_detects_freeing_a_never_allocated_slot():
    pool = make_pool(8)
    pool.alloc(2)
    with pytest.raises(PoolError):
        pool.free(torch.tensor([5]))


def test_debug_detects_padding_slot_and_out_of_range():
    pool = make_pool(8)
    pool.alloc(8)
    with pytest.raises(PoolError):
        pool.free(torch.tensor([PAD_SLOT]))
    with pytest.raises(PoolError):
        pool.free(torch.tensor([9]))


def test_debug_detects_duplicate_in_one_free():
    pool = make_pool(8)
    slots = pool.alloc(2)
    with pytest.raises(PoolError):
        pool.free(torch.cat([slots, slots[:1]]))


def test_clear_returns_everything():
    pool = make_pool(8)
    pool.alloc(5)
    pool.clear()
    assert pool.available_size() == 8
    assert ids(pool.alloc(2)) == [1, 2]


def test_set_kv_and_get_kv_roundtrip():
    pool = make_pool(8, debug=False)
    slots = torch.tensor([6, 2, 4])
    k = torch.randn(3, 2, 4)
    v = torch.randn(3, 2, 4)
    pool.set_kv(1, slots, k, v)
    kb, vb = pool.get_kv(1)
    assert torch.equal(kb[slots], k) and torch.equal(vb[slots], v)
    assert torch.count_nonzero(pool.get_kv(0)[0]) == 0  # other layers untouched
    assert torch.count_nonzero(kb[PAD_SLOT]) == 0


def test_bytes_per_token_and_budget_sizing():
    assert SHAPE.bytes_per_token == 2 * 2 * 2 * 4 * 4
    n = tokens_for_budget(SHAPE, torch.device("cpu"), 0.001, model_bytes=0, page_size=4)
    assert n > 0 and n % 4 == 0
    assert tokens_for_budget(SHAPE, torch.device("cpu"), 0.5, model_bytes=2**62) == 0
    with pytest.raises(ValueError):
        tokens_for_budget(SHAPE, torch.device("cpu"), 0.0)


def test_for_model_sizes_explicitly_or_by_fraction():
    config = ModelConfig(
        architecture="llama", vocab_size=32, hidden_size=16, intermediate_size=32,
        num_layers=3, num_heads=4, num_kv_heads=2, head_dim=4,
    )  # fmt: skip
    pool = KVPool.for_model(config, torch.float32, "cpu", max_total_tokens=10)
    assert pool.total == 10 and pool.k_buffer.shape == (3, 11, 2, 4)
    small = KVPool.for_model(config, torch.float32, "cpu", mem_fraction=1e-5)
    assert small.total > 0
    with pytest.raises(ValueError):
        KVPool.for_model(config, torch.float32, "cpu")
    with pytest.raises(ValueError):
        KVPool.for_model(config, torch.float32, "cpu", mem_fraction=0.5, model_bytes=2**62)


def test_head_major_pool_stores_heads_apart_and_reads_like_slot_major():
    """Writes land at the same logical [slot, head] places in both layouts; a head-major
    layer's kv head is one run of consecutive slots; flat_rows agree."""
    shape = PoolShape(num_layers=2, num_kv_heads=3, head_dim=8, dtype=torch.float32)
    pools = [KVPool(shape, 64, head_major=h) for h in (False, True)]
    slots = torch.tensor([5, 9, 10])
    k, v = torch.randn(3, 3, 8), torch.randn(3, 3, 8)
    for p in pools:
        p.set_kv(1, slots, k, v)
    (ks, vs), (kh, vh) = (p.get_kv(1) for p in pools)
    assert torch.equal(ks, kh) and torch.equal(vs, vh) and torch.equal(kh[slots], k)
    assert kh.stride() == (8, kh.shape[0] * 8, 1) and ks.is_contiguous()
    assert all(torch.equal(a, b) for a, b in zip(*(p.flat_rows(1) for p in pools), strict=True))
    assert torch.equal(pools[1].k_buffer[:, slots], pools[0].k_buffer[:, slots])
