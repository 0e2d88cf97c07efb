"""The cache view's hit-rate history and label decoding (server side, no engine)."""

from __future__ import annotations

from radixlm.server.cache_view import HISTORY_POINTS, MIN_SAMPLE_S, CacheViewState, decode_labels


def snap(t: float, prompt: int, cached: int, evicted: int = 0) -> dict:
    return {"time": t, "stats": {"prompt_tokens": prompt, "cached_tokens": cached},
            "evictions": {"total_tokens": evicted, "recent": []}, "nodes": []}  # fmt: skip


def test_window_and_cumulative_rates():
    view = CacheViewState()
    view.sample(snap(100.0, 0, 0))
    view.sample(snap(101.0, 1000, 100))
    view.sample(snap(101.0 + MIN_SAMPLE_S / 2, 5000, 4000))  # too close: not kept
    view.sample(snap(102.0, 2000, 900, evicted=64))
    view.sample(snap(103.0, 2000, 900))  # nothing admitted in between
    h = list(view.history)
    assert [p["t"] for p in h] == [100.0, 101.0, 102.0, 103.0]
    assert h[0]["hit_rate"] is None and h[0]["window_hit_rate"] is None
    assert h[1]["window_hit_rate"] == 0.1 and h[1]["hit_rate"] == 0.1
    assert h[2]["window_hit_rate"] == 0.8 and h[2]["hit_rate"] == 0.45
    assert h[2]["evicted_tokens"] == 64
    assert h[3]["window_hit_rate"] is None and h[3]["hit_rate"] == 0.45


def test_a_restarted_engine_starts_the_window_from_zero():
    view = CacheViewState()
    view.sample(snap(10.0, 5000, 4000))
    view.sample(snap(11.0, 200, 50))  # counters went down: a new engine
    assert view.history[-1]["window_hit_rate"] == 0.25


def test_history_is_bounded():
    view = CacheViewState()
    for i in range(HISTORY_POINTS + 10):
        view.sample(snap(float(i), i, 0))
    assert len(view.history) == HISTORY_POINTS and view.history[0]["t"] == 10.0


class FakeTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        assert skip_special_tokens is False  # labels show special tokens
        return "".join(chr(96 + i) for i in ids)


def test_labels_are_decoded_and_ids_dropped():
    s = snap(0.0, 0, 0)
    s["nodes"] = [{"id": "root", "kind": "root"}, {"id": "7", "kind": "node", "label_ids": [1, 2]}]
    s["evictions"]["recent"] = [{"tokens": 3, "label_ids": [3, 4, 5]}]
    decode_labels(FakeTokenizer(), s)
    assert s["nodes"][1] == {"id": "7", "kind": "node", "label": "ab"}
    assert s["evictions"]["recent"][0] == {"tokens": 3, "label": "cde"}
    assert "label" not in s["nodes"][0]
