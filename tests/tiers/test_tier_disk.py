"""The disk tier on its own: files that survive a reopen, and every way a file can be bad."""

from __future__ import annotations

import logging

import pytest
import torch

from radixlm.kvcache.tiers.disk import DiskTier

LAYERS, HEADS, DIM = 2, 2, 3


def kv_of(key):
    """Deterministic K/V per token: [2, L, n, H, D], distinct for every (token, position)."""
    t = torch.tensor(key, dtype=torch.float32)
    pos = torch.arange(len(key), dtype=torch.float32)
    base = (t * 1000 + pos).reshape(1, 1, -1, 1, 1)
    grid = torch.arange(2 * LAYERS * HEADS * DIM, dtype=torch.float32)
    grid = grid.reshape(2, LAYERS, 1, HEADS, DIM)
    return base + grid / 100


def save_all(tier, key, extra_key=None):
    full = kv_of(key)
    return tier.save(key, extra_key, 0, len(key), lambda lo, hi: full[:, :, lo:hi].clone())


def open_tier(path, fp="fp-a", max_bytes=1 << 30, block=4):
    tier = DiskTier.open(path, fp, max_bytes, block_tokens=block)
    assert tier is not None
    return tier


def files(path):
    return sorted((path / "entries").glob("*.kv"))


KEY = list(range(10, 24))  # 14 tokens: three full blocks of 4 and a tail of 2


def test_entries_survive_a_reopen_bit_for_bit(tmp_path):
    tier = open_tier(tmp_path)
    assert save_all(tier, KEY) == 14
    assert tier.wait_idle(10)
    assert save_all(tier, KEY) == 0  # held already: nothing is written twice
    tier.close()
    assert len(files(tmp_path)) == 4
    again = open_tier(tmp_path)
    hit = again.lookup(KEY, None, 5)
    assert (hit.start, hit.end) == (5, 14)
    assert torch.equal(again.read(hit), kv_of(KEY)[:, :, 5:14])
    assert again.stats.tokens_loaded == 9
    again.close()


def test_pending_writes_are_readable_before_they_land(tmp_path):
    tier = open_tier(tmp_path)
    save_all(tier, KEY)
    hit = tier.lookup(KEY, None, 0)  # whether or not the writer got to them yet
    assert torch.equal(tier.read(hit), kv_of(KEY))
    tier.close()


def test_a_truncated_file_is_skipped_with_a_log_line(tmp_path, caplog):
    tier = open_tier(tmp_path)
    save_all(tier, KEY)
    tier.close()
    victim = next(f for f in files(tmp_path) if f.read_bytes().find(b'"start":4,') > 0)
    victim.write_bytes(victim.read_bytes()[:-7])
    with caplog.at_level(logging.WARNING):
        again = open_tier(tmp_path)
    assert f"skipping entry {victim.name}" in caplog.text and "truncated" in caplog.text
    assert not victim.exists()
    assert again.lookup(KEY, None, 0).end == 4  # the chain stops before the bad block
    again.close()


def test_a_corrupted_payload_fails_its_checksum_and_is_never_loaded(tmp_path, caplog):
    tier = open_tier(tmp_path)
    save_all(tier, KEY)
    tier.close()
    victim = next(f for f in files(tmp_path) if f.read_bytes().find(b'"start":8,') > 0)
    blob = bytearray(victim.read_bytes())
    blob[-3] ^= 0xFF  # same size, one payload byte changed
    victim.write_bytes(bytes(blob))
    again = open_tier(tmp_path)
    hit = again.lookup(KEY, None, 0)
    assert hit.end == 14  # the header is intact: the index still lists it
    with caplog.at_level(logging.WARNING):
        kv = again.read(hit)
    assert "checksum" in caplog.text
    assert torch.equal(kv, kv_of(KEY)[:, :, :8])  # only what came before the bad entry
    assert again.lookup(KEY, None, 0).end == 8 and again.stats.bad_entries == 1
    again.close()


def test_a_directory_of_another_model_is_ignored_with_a_log_line(tmp_path, caplog):
    tier = open_tier(tmp_path, fp="fp-a")
    save_all(tier, KEY)
    tier.close()
    with caplog.at_level(logging.WARNING):
        assert DiskTier.open(tmp_path, "fp-b", 1 << 30, block_tokens=4) is None
    assert "not used" in caplog.text and "fp-a" in caplog.text
    assert len(files(tmp_path)) == 4  # left as it was
    with caplog.at_level(logging.WARNING):
        assert DiskTier.open(tmp_path, "fp-a", 1 << 30, block_tokens=8) is None


def test_a_file_copied_in_from_another_model_is_skipped(tmp_path, caplog):
    a, b = tmp_path / "a", tmp_path / "b"
    tier = open_tier(a, fp="fp-a")
    save_all(tier, KEY)
    tier.close()
    other = open_tier(b, fp="fp-b")
    other.close()
    stray = files(a)[0]
    (b / "entries" / stray.name).write_bytes(stray.read_bytes())
    with caplog.at_level(logging.WARNING):
        again = open_tier(b, fp="fp-b")
    assert "another model fingerprint" in caplog.text and len(again.index) == 0
    again.close()


def test_salts_keep_their_own_entries(tmp_path):
    tier = open_tier(tmp_path)
    save_all(tier, KEY, extra_key="tenant-1")
    tier.close()
    again = open_tier(tmp_path)
    assert again.lookup(KEY, "tenant-1", 0).end == 14
    assert again.lookup(KEY, "tenant-2", 0).length == 0
    assert again.lookup(KEY, None, 0).length == 0
    assert not any(b"tenant-1" in f.read_bytes() for f in files(tmp_path))  # hashes only
    again.close()


def test_the_size_cap_deletes_least_recently_used_files(tmp_path):
    tier = open_tier(tmp_path)
    save_all(tier, [1, 2, 3, 4])
    tier.wait_idle(10)
    size = files(tmp_path)[0].stat().st_size
    tier.close()
    small = open_tier(tmp_path, max_bytes=2 * size + size // 2)  # room for two entries
    save_all(small, [5, 6, 7, 8])
    small.wait_idle(10)
    small.read(small.lookup([1, 2, 3, 4], None, 0))  # a use: [1..4] is now the most recent
    save_all(small, [9, 10, 11, 12])
    small.wait_idle(10)
    assert len(files(tmp_path)) == 2
    assert small.lookup([1, 2, 3, 4], None, 0).end == 4
    assert small.lookup([5, 6, 7, 8], None, 0).length == 0
    assert small.lookup([9, 10, 11, 12], None, 0).end == 4
    small.close()


def test_clear_deletes_the_files_and_leftover_temporaries_go_on_open(tmp_path):
    tier = open_tier(tmp_path)
    save_all(tier, KEY)
    tier.wait_idle(10)
    tier.clear()
    tier.wait_idle(10)
    assert files(tmp_path) == [] and tier.lookup(KEY, None, 0).length == 0
    tier.close()
    (tmp_path / "entries" / "abc.kv.123.tmp").write_bytes(b"half")
    open_tier(tmp_path).close()
    assert list((tmp_path / "entries").iterdir()) == []


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_payloads_round_trip(tmp_path, dtype):
    tier = open_tier(tmp_path)
    full = kv_of(KEY).to(dtype)
    tier.save(KEY, None, 0, 14, lambda lo, hi: full[:, :, lo:hi].clone())
    tier.close()
    again = open_tier(tmp_path)
    got = again.read(again.lookup(KEY, None, 0))
    assert got.dtype == dtype and torch.equal(got, full)
    again.close()
