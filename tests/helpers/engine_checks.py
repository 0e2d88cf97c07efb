"""Checks every engine scenario ends with."""

from __future__ import annotations


def assert_clean(engine) -> None:
    """Idle engine: integrity holds, nothing running or queued, no slot held by a request."""
    engine.check_integrity()
    stats = engine.get_stats()
    assert stats["num_running_reqs"] == 0 and stats["num_waiting_reqs"] == 0
    assert stats["token_usage"] == 0.0
    assert engine.integrity_error is None
