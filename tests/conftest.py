"""Shared fixtures: tiny random checkpoints written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.tiny_models import VARIANTS, write_tiny_model


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """Return `make(variant) -> Path` that writes (once) and returns a tiny HF model dir."""
    made: dict[str, Path] = {}

    def make(variant: str) -> Path:
        if variant not in made:
            made[variant] = write_tiny_model(tmp_path_factory.mktemp(variant), variant)
        return made[variant]

    return make


@pytest.fixture(scope="session", params=sorted(VARIANTS))
def tiny_model_dir(request, tiny_model_factory) -> Path:
    """A tiny HF model directory, for each Llama-family variant."""
    return tiny_model_factory(request.param)
