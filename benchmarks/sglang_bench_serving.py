"""Run SGLang's `python -m sglang.bench_serving` unchanged, in an environment without torchvision.

`python benchmarks/sglang_bench_serving.py ARGS...` is `python -m sglang.bench_serving ARGS...`,
except that when torchvision is not importable, empty placeholder modules stand in for it:
bench_serving imports it only through SGLang's multimodal model configs, never to benchmark
text, and the torchvision wheels on PyPI are CUDA builds that do not load beside a CPU torch.
Any use of a placeholder raises. See sglang_bench_serving.md for the environment and results.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import runpy
import sys
import types

PLACEHOLDERS = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


class _Missing(types.ModuleType):
    """A module whose every attribute is another placeholder; calling one raises."""

    def __getattr__(self, name: str) -> _Missing:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Missing(f"{self.__name__}.{name}")

    def __call__(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError(f"{self.__name__}: torchvision is not installed")


def install_placeholders() -> None:
    """Stand in for torchvision; transformers decides what is available before they exist."""
    import transformers

    # transformers probes installed packages once, when these are first imported.
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer  # noqa: F401

    del transformers
    for name in PLACEHOLDERS:
        module = _Missing(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        sys.modules[name] = module


if __name__ == "__main__":
    if importlib.util.find_spec("torchvision") is None:
        install_placeholders()
    sys.argv = ["sglang.bench_serving", *sys.argv[1:]]
    runpy.run_module("sglang.bench_serving", run_name="__main__")
