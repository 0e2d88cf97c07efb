"""What this machine's CPU can do, read once from the kernel's CPU flags."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

# Flags that mean bfloat16 arithmetic in hardware (not emulated through float32).
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpuinfo_lines() -> tuple[str, ...]:
    """The distinct "model name" and "flags" lines of /proc/cpuinfo (empty where it is absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    return tuple(sorted({ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))}))


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (e.g. "avx512f", "amx_bf16")."""
    flags: set[str] = set()
    for line in cpuinfo_lines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return frozenset(flags)


def cpu_signature() -> str:
    """The CPU's model name and flags (code built with -march=native is valid only on them)."""
    return "\n".join(cpuinfo_lines()) or platform.processor() or platform.machine()


def native_bf16_flag() -> str | None:
    """The first of BF16_FLAGS this CPU has, or None."""
    flags = cpu_flags()
    return next((f for f in BF16_FLAGS if f in flags), None)
