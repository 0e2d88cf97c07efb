"""Cache tiers below the KV pool: where evicted prefixes go, and come back from.

`base.CacheTier` is the interface, `disk.DiskTier` the persistent tier
(`--cache-dir`), `bridge.TierBridge` connects a tier to the radix tree.
`attach_disk_tier` wires one up for an engine.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from radixlm.kvcache.pool import PoolShape
from radixlm.kvcache.radix_cache import RadixCache
from radixlm.kvcache.tiers.bridge import TierBridge
from radixlm.kvcache.tiers.disk import DiskTier
from radixlm.kvcache.tiers.fingerprint import model_fingerprint

log = logging.getLogger(__name__)

__all__ = ["DiskTier", "TierBridge", "attach_disk_tier"]


def attach_disk_tier(
    cache: RadixCache,
    directory: str | Path,
    max_gb: float,
    model_path: Path,
    quantization: str,
    device: torch.device,
) -> TierBridge | None:
    """Open `directory` as the disk tier under `cache` and connect the two.

    Returns the bridge (also set as `cache.tier`), or None when the directory
    belongs to another model or cannot be used (then the cache runs alone; the
    reason is logged).
    """
    directory = Path(directory)
    shape: PoolShape = cache.pool.shape
    memo = directory / "fingerprints.json" if directory.is_dir() else None
    fp = model_fingerprint(model_path, shape, quantization, device, memo)
    tier = DiskTier.open(directory, fp, int(max_gb * 2**30))
    if tier is None:
        return None
    bridge = TierBridge(cache, tier)
    cache.tier = bridge
    return bridge
