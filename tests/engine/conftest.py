"""Engines on tiny random models, and a check that nothing leaked after each scenario."""

from __future__ import annotations

import pytest

import radixlm


@pytest.fixture(scope="module")
def engine_factory(tiny_model_factory):
    """`make(variant="llama", **options) -> Engine`; engines are shut down after the module."""
    made = []

    def make(variant: str = "llama", **options):
        options.setdefault("max_total_tokens", 4096)
        options.setdefault("debug", True)
        options.setdefault("dtype", "float32")  # the exact mode: cache on/off compared bitwise
        eng = radixlm.Engine(model=str(tiny_model_factory(variant)), **options)
        made.append(eng)
        return eng

    yield make
    for eng in made:
        eng.shutdown()
