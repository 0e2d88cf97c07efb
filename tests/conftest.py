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


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The embedded SmolLM2 GGUF file; skips (saying how to install it) when absent."""
    from radixlm.loader import DEFAULT_MODEL, ModelNotFoundError, resolve_model_path

    try:
        return resolve_model_path(DEFAULT_MODEL)
    except ModelNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    """(LoadedModel, Tokenizer) for SmolLM2-135M-Instruct in float32, loaded once."""
    from radixlm.config import LoadConfig
    from radixlm.loader import load_model
    from radixlm.tokenizer import load_tokenizer

    loaded = load_model(LoadConfig(model=str(smollm2_path), dtype="float32"), progress=False)
    return loaded, load_tokenizer(smollm2_path)
