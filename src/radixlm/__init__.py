"""radixlm: an LLM serving engine that reuses the KV cache of every shared prompt prefix."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from radixlm.threads import engine_spin_env

engine_spin_env()  # before torch loads, where it has not yet; see radixlm.threads

__version__ = "0.1.0"
__all__ = ["Engine", "SamplingParams", "__version__"]

if TYPE_CHECKING:
    from radixlm.engine.engine import Engine
    from radixlm.sampling.params import SamplingParams


def __getattr__(name: str) -> Any:
    # Lazy, so `import radixlm` stays cheap for the CLI and for tools.
    if name == "Engine":
        from radixlm.engine.engine import Engine

        return Engine
    if name == "SamplingParams":
        from radixlm.sampling.params import SamplingParams

        return SamplingParams
    raise AttributeError(name)
