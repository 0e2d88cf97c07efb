"""CPU tensors on 2 MiB pages (Linux transparent huge pages), for memory read every step.

A decode step streams ~70 MB of quantized weights and every cached K/V row it
attends to; with 4 KiB pages each step also walks tens of thousands of page-table
entries. Where the kernel's THP mode is `madvise` (a common default), memory is
only backed by huge pages when asked for. `huge_empty` asks; `pack_buffers` moves
the quantized layers' buffers into one such block (each is under 2 MiB alone).
On other systems, or when asking fails, the tensors are ordinary ones.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys

import torch
from torch import nn

log = logging.getLogger(__name__)

HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
_ALIGN = 64  # each packed buffer starts on a cache line


@functools.cache
def _madvise():
    """libc's madvise, or None where there is none to call (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    fn = libc.madvise
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return fn


def huge_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised contiguous CPU tensor whose pages the OS is asked to back with
    huge pages (advice only; call before the memory is first touched)."""
    nbytes = max(1, torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
    madvise = _madvise()
    if madvise is None or nbytes < HUGE_PAGE:
        return torch.empty(shape, dtype=dtype)
    raw = torch.empty(nbytes + HUGE_PAGE, dtype=torch.uint8)
    start = (-raw.data_ptr()) % HUGE_PAGE
    aligned = -(-nbytes // HUGE_PAGE) * HUGE_PAGE
    if madvise(raw.data_ptr() + start, min(aligned, raw.numel() - start), _MADV_HUGEPAGE) != 0:
        log.debug("madvise(MADV_HUGEPAGE) failed; using ordinary pages")
    return raw[start : start + nbytes].view(dtype).view(shape)


def huge_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """`huge_empty`, filled with zeros."""
    return huge_empty(shape, dtype).zero_()


def pack_buffers(modules: list[nn.Module]) -> int:
    """Move every buffer of `modules` (CPU, non-empty) into one `huge_empty` block, as
    views of it; returns the bytes moved. Modules appearing twice are packed once."""
    owners: list[tuple[nn.Module, str, torch.Tensor]] = []
    seen: set[int] = set()
    for module in modules:
        if id(module) in seen:
            continue
        seen.add(id(module))
        for name, buf in module.named_buffers(recurse=False):
            if buf is not None and buf.device.type == "cpu" and buf.numel() > 0:
                owners.append((module, name, buf))
    sizes = [-(-b.numel() * b.element_size() // _ALIGN) * _ALIGN for _, _, b in owners]
    if not owners:
        return 0
    block = huge_empty((sum(sizes),), torch.uint8)
    offset = 0
    for (module, name, buf), size in zip(owners, sizes, strict=True):
        nbytes = buf.numel() * buf.element_size()
        view = block[offset : offset + nbytes].view(buf.dtype).view(buf.shape)
        view.copy_(buf)
        setattr(module, name, view)  # not _buffers[name]: a FastModule rebinds its copy
        offset += size
    return offset
