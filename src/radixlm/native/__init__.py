"""CPU kernels written for radixlm, compiled on first use and cached.

`kernels()` returns the compiled extension module, or None when it cannot be
built here (no C++ compiler, a non-CPU build, or `RADIXLM_NATIVE=0`); callers
then take their plain-torch path. The build (about a minute on two cores) is
cached under `$RADIXLM_CACHE_DIR` (default `~/.cache/radixlm`), keyed by the
source, the torch version and the CPU, so later processes load it in a
fraction of a second. Concurrent first builds wait on one another.

Functions of the module (see each .cpp file's header for shapes):
- `paged_decode(q, k_cache, v_cache, kv_indptr, kv_indices, scale) -> [out, lse]`
- `paged_extend(q, k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, scale, causal)
  -> [out, lse]`: new tokens over cached and new keys, bfloat16;
  `paged_extend_supported(d)` says whether it was built (AVX512-BF16) for head_dim d
- `int4_dequantize(packed, scales_zeros, out_t, group)`: W.T into `out_t` [k, n] bfloat16
- `int4_mm(x, packed, scales_zeros, group) -> y`: x [m, k] bfloat16 @ W.T for small m;
  `int4_mm_supported()` is False where the CPU lacks AVX512-BF16 or AVX512-VBMI
- `int4_mm_q8(x, packed, scales_zeros, group, outliers) -> y`: the same product for many
  rows, x quantized to int8 per row and group after each row's `outliers` largest inputs
  are taken out (those in float32), products in int32; `int4_mm_q8_supported()` needs
  AVX512-VNNI, AVX512-VBMI and AVX512-BF16
- `int8_mm(x, q, scale) -> y`: x [m, k] bfloat16 @ (q * scale).T for an int8 [n, k] weight
  (the output head; any rows, tiled in bfloat16 past 8 with AVX512-BF16); `int8_mm_supported()`
  (AVX-512)
- `rms_norm`, `add_rms_norm`, `rope_`, `silu_mul`: the decoder's fused elementwise ops
- `DecodeStack(norms, linears, heads, kv_heads, head_dim, eps, scale)`: every decoder layer
  of a decode step in one call, `.run(...)` (`models.decode_stack` builds and calls it)

`remembered(name, measure)` keeps a per-build measurement (a kernel crossover) beside
the build, so it is measured once per machine.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

from radixlm.cpu import cpu_signature

log = logging.getLogger(__name__)

_SOURCES = (
    "paged_decode.cpp", "paged_extend.cpp", "int4_dequant.cpp", "int4_mm.cpp", "int4_mm_q8.cpp",
    "int8_mm.cpp", "fused.cpp", "decode_stack.cpp",
)
# included by the sources: part of the build key
_HEADERS = ("vec.h", "paged_decode_bf16.h", "kernels.h")
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-ffast-math", "-fno-finite-math-only"]


def _build_dir(key: str) -> Path:
    """Where the build for `key` lives: the radixlm cache, or a fresh temporary
    directory when the cache is turned off (an empty `RADIXLM_CACHE_DIR`)."""
    root = os.environ.get("RADIXLM_CACHE_DIR", str(Path.home() / ".cache" / "radixlm"))
    if not root:
        return Path(tempfile.mkdtemp(prefix="radixlm-kernels-"))
    path = Path(root) / "kernels" / key
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.cache
def _key() -> str:
    """The build's cache key: the sources and headers, the torch version, the CPU and the
    flags."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    files = (*_SOURCES, *_HEADERS)
    for part in [*((here / name).read_bytes() for name in files), torch.__version__.encode(),
                 cpu_signature().encode(), " ".join(_FLAGS).encode()]:  # fmt: skip
        digest.update(part)
    return digest.hexdigest()[:16]


@functools.cache
def kernels() -> ModuleType | None:
    """The compiled kernel module, or None (logged once) when it cannot be built or is off."""
    if os.environ.get("RADIXLM_NATIVE", "1") == "0":
        return None
    here = Path(__file__).parent
    key = _key()
    try:
        from torch.utils.cpp_extension import load

        module = load(
            name=f"radixlm_native_{key}", sources=[str(here / name) for name in _SOURCES],
            extra_cflags=_FLAGS, extra_ldflags=["-fopenmp"],
            build_directory=str(_build_dir(key)), verbose=False,
        )  # fmt: skip
    except Exception as e:  # any build failure means: use the torch path
        log.warning("native CPU kernels unavailable (%s); using the plain torch paths", e)
        return None
    return module


def remembered(name: str, measure: Callable[[], int]) -> int:
    """An integer that `measure()` finds once per kernel build (so per CPU, torch version
    and kernel source), kept in the build's directory: later processes read it back, so
    every process on one machine makes the same choice. Call only when `kernels()` is
    not None."""
    path = _build_dir(_key()) / f"{name}.json"
    try:
        return int(json.loads(path.read_text())["value"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    value = int(measure())
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"value": value}))
    tmp.replace(path)  # atomic: a concurrent reader sees the whole file or none
    return value
