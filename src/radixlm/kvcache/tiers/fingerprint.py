"""A model fingerprint: what must agree for stored K/V to be valid for this engine.

K/V depend on the weights, the compute dtype and weight quantization, the
device type (kernels differ), the model code and the torch version. The
fingerprint hashes all of them; the weights by content (every weight file and
`config.json`, streamed), so a retrained checkpoint under the same path gets
a new fingerprint. Hashing a large checkpoint takes a while (~1 s per GB), so
the content hash is remembered per (file path, size, mtime) in an optional
memo file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import torch

from radixlm.kvcache.pool import PoolShape

log = logging.getLogger(__name__)

CODE_VERSION = "1"  # bump when a change to the model code changes K/V
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")


def weight_files(path: Path) -> list[Path]:
    """The files whose bytes decide the K/V: the weights and config.json (sorted)."""
    if path.is_file():
        return [path]
    wanted = [p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES or p.name == "config.json"]
    return sorted(p for p in wanted if p.is_file())


def file_digest(path: Path, memo: dict[str, str] | None = None) -> str:
    """blake2b of a file's bytes (looked up in, and added to, `memo` by path, size, mtime)."""
    st = path.stat()
    memo_key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    if memo is not None and memo_key in memo:
        return memo[memo_key]
    h = hashlib.blake2b()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    digest = h.hexdigest()
    if memo is not None:
        memo[memo_key] = digest
    return digest


def model_fingerprint(
    model_path: Path,
    shape: PoolShape,
    quantization: str,
    device: torch.device,
    memo_path: Path | None = None,
) -> str:
    """A hex digest naming this model, dtype, quantization, device type and code."""
    t0 = time.perf_counter()
    memo = _load_memo(memo_path)
    files = [(p.name, file_digest(p, memo)) for p in weight_files(Path(model_path))]
    parts = {
        "code": CODE_VERSION, "torch": torch.__version__, "device": device.type,
        "dtype": str(shape.dtype), "quantization": quantization,
        "kv": [shape.num_layers, shape.num_kv_heads, shape.head_dim], "files": files,
    }  # fmt: skip
    if memo_path is not None:
        _save_memo(memo_path, memo)
    digest = hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=16)
    log.debug("model fingerprint in %.2f s", time.perf_counter() - t0)
    return digest.hexdigest()


def _load_memo(path: Path | None) -> dict[str, str] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_memo(path: Path, memo: dict[str, str] | None) -> None:
    try:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, path)
    except OSError as e:
        log.debug("could not save the fingerprint memo %s: %s", path, e)
