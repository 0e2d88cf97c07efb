"""The block index: hash-chained lookups, what a save must write, LRU order."""

from __future__ import annotations

from radixlm.kvcache.tiers.index import BlockIndex, Entry, chain_digest


def _store(index: BlockIndex, key, extra_key=None, start=0, end=None, nbytes=10):
    """Add entries for what `missing` says key[start:end] needs; return them."""
    end = len(key) if end is None else end
    out = []
    for m in index.missing(key, extra_key, start, end):
        e = Entry(m.digest, m.parent, m.lo, tuple(key[m.lo : m.hi]), nbytes, "t")
        index.add(e)
        out.append(e)
    return out


def test_full_blocks_and_tail_chain_from_the_root():
    index = BlockIndex("fp", block=4)
    key = list(range(100, 110))  # blocks [0,4) [4,8) and a tail [8,10)
    made = _store(index, key)
    assert [(e.start, len(e.tokens)) for e in made] == [(0, 4), (4, 4), (8, 2)]
    assert made[0].parent == index.root(None)
    assert made[1].parent == made[0].digest == chain_digest(index.root(None), key[:4])
    hit = index.lookup(key, None, 0)
    assert (hit.start, hit.end) == (0, 10)
    assert index.missing(key, None, 0, 10) == []  # everything is held now


def test_lookup_starts_mid_block_and_stops_where_the_key_differs():
    index = BlockIndex("fp", block=4)
    key = list(range(12))
    _store(index, key)
    hit = index.lookup(key, None, 6)  # the tree holds 6 tokens already
    assert (hit.start, hit.end) == (6, 12)
    assert [(p.entry.start, p.lo, p.hi) for p in hit.pieces] == [(4, 2, 4), (8, 0, 4)]
    other = [*key[:9], 99, 98, 97]  # differs at 9, inside the third block
    assert index.lookup(other, None, 0).end == 9
    assert index.lookup(key[:7], None, 0).end == 7  # a key ending inside a block


def test_a_changed_early_token_or_another_namespace_finds_nothing():
    index = BlockIndex("fp", block=4)
    key = list(range(12))
    _store(index, key, extra_key="salt-a")
    assert index.lookup(key, "salt-a", 4).end == 12
    assert index.lookup(key, "salt-b", 4).length == 0
    assert index.lookup(key, None, 4).length == 0
    changed = [7, *key[1:]]  # the same blocks after position 4, another history before
    assert index.lookup(changed, "salt-a", 4).length == 0
    assert BlockIndex("other-model", block=4).root("salt-a") != index.root("salt-a")


def test_a_tail_is_covered_by_a_longer_entry_beside_it():
    index = BlockIndex("fp", block=4)
    long = list(range(8))
    _store(index, long)
    assert index.missing(long[:6], None, 0, 6) == []  # [4,6) lies inside the block [4,8)
    longer = list(range(11))
    need = index.missing(longer, None, 0, 11)
    assert [(m.lo, m.hi) for m in need] == [(8, 11)]


def test_over_the_cap_the_least_recently_used_go_first():
    index = BlockIndex("fp", block=4)
    a = _store(index, [1, 2, 3, 4])
    b = _store(index, [5, 6, 7, 8])
    c = _store(index, [9, 10, 11, 12])
    index.touch(a[0])  # a is now the most recent
    gone = index.over(20)
    assert gone == b
    assert set(index.by_digest) == {a[0].digest, c[0].digest} and index.total_bytes == 20
    assert index.lookup([5, 6, 7, 8], None, 0).length == 0
