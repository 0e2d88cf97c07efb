"""The KV pool: preallocated K/V storage for every token slot, and a slot allocator.

A *slot* is one row of every layer's K and V tensors: the K/V of one token.
Storage per layer is `[num_slots, num_kv_heads, head_dim]` in the model dtype on
the model device. Slots are handed out in whole *pages* of `page_size`
consecutive slots (page_size 1 = token granularity).

Page 0 (slots `[0, page_size)`) is reserved: it is never allocated, so an
attention backend may point padding entries at slot 0 (`PAD_SLOT`) and read
harmless zeros. `total` therefore counts usable slots only; the tensors hold
`total + page_size` rows.

The allocator is a stack of free page ids in one int64 tensor plus a Python
top-of-stack counter: `alloc` and `free` are O(n) tensor slices, with no
per-slot Python objects and no device synchronisation (outside debug mode and
page_size > 1, whose `free` deduplicates page ids). A fresh pool hands out
slots 1, 2, 3, ... in order; the most recently freed block is reused first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from radixlm.config import ModelConfig
from radixlm.hugepages import huge_zeros
from radixlm.kvcache.ledger import SlotLedger

PAD_SLOT = 0  # a slot that is never allocated; safe to read as padding


class PoolError(RuntimeError):
    """A slot was freed twice, or freed without having been allocated (debug mode)."""


@dataclass(frozen=True)
class PoolShape:
    """The per-token geometry of a KV pool."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @classmethod
    def of(cls, config: ModelConfig, dtype: torch.dtype) -> PoolShape:
        return cls(config.num_layers, config.num_kv_heads, config.head_dim, dtype)

    @property
    def bytes_per_token(self) -> int:
        """Bytes of K plus V for one token across all layers."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * itemsize


def device_memory(device: torch.device) -> tuple[int, int]:
    """(available, total) bytes of memory on `device`.

    CUDA: `torch.cuda.mem_get_info`. CPU: `MemAvailable` from the kernel's
    meminfo when it exists, else free physical pages from `os.sysconf`.
    """
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return int(free), int(total)
    page = os.sysconf("SC_PAGE_SIZE")
    total = page * os.sysconf("SC_PHYS_PAGES")
    available = page * os.sysconf("SC_AVPHYS_PAGES")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    return available, total


def tokens_for_budget(
    shape: PoolShape,
    device: torch.device,
    mem_fraction: float,
    model_bytes: int = 0,
    page_size: int = 1,
) -> int:
    """How many token slots fit the memory budget, rounded down to whole pages.

    The budget: model weights plus the pool take at most `mem_fraction` of the
    device's total memory, and the pool takes at most `mem_fraction` of what
    is available right now. Returns 0 when nothing fits.
    """
    if not 0.0 < mem_fraction <= 1.0:
        raise ValueError(f"mem_fraction must be in (0, 1], got {mem_fraction}")
    available, total = device_memory(device)
    budget = min(mem_fraction * total - model_bytes, mem_fraction * available)
    tokens = max(0, int(budget // shape.bytes_per_token))
    return tokens // page_size * page_size


def _zeros(dims: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zeroed K or V buffer; on the CPU on huge pages (every decode step reads it)."""
    if device.type == "cpu":
        return huge_zeros(dims, dtype)
    return torch.zeros(dims, dtype=dtype, device=device)


class KVPool:
    """K/V tensors for `total` usable token slots, and the allocator over them.

    `alloc(n)` returns slot indices for n tokens in ceil(n / page_size) fresh
    pages (each page's slots consecutive; no promise about page order), or
    None when not enough pages are free. `free(indices)` returns the pages that
    contain `indices`. With `debug=True` every free is checked against an
    allocation mask and a bad free raises `PoolError` (this synchronises with
    the device; leave it off in serving). After `track_writes()`, `ledger`
    records what each slot's K/V was last written for (`kvcache.ledger`).

    Layout: `k_buffer` / `v_buffer` are [layers, slots, Hkv, D] whichever way they are
    stored. Slot-major (the default) stores them so; head-major (`head_major=True`)
    stores [layers, Hkv, slots, D], so that the kernels' pass over one kv head of a run
    of slots reads consecutive bytes (`benchmarks/epyc_zen4.md`). `get_kv` returns
    views of either with unit stride along D; `flat_rows` the [slots * Hkv, D] rows the
    torch attention paths gather from.
    """

    def __init__(
        self,
        shape: PoolShape,
        max_total_tokens: int,
        device: torch.device | str = "cpu",
        page_size: int = 1,
        debug: bool = False,
        head_major: bool = False,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        if max_total_tokens < page_size:
            raise ValueError(f"a pool needs at least one page ({page_size} slots)")
        self.shape = shape
        self.device = torch.device(device)
        self.page_size = page_size
        self.debug = debug
        self.num_pages = max_total_tokens // page_size  # usable pages, ids 1..num_pages
        rows = (self.num_pages + 1) * page_size  # + the reserved page 0
        self.head_major = head_major
        dims = (shape.num_layers, rows, shape.num_kv_heads, shape.head_dim)
        if head_major:  # stored [layers, Hkv, slots, D]; seen as [layers, slots, Hkv, D]
            stored = (shape.num_layers, shape.num_kv_heads, rows, shape.head_dim)
            self.k_buffer = _zeros(stored, shape.dtype, self.device).transpose(1, 2)
            self.v_buffer = _zeros(stored, shape.dtype, self.device).transpose(1, 2)
        else:
            self.k_buffer = _zeros(dims, shape.dtype, self.device)
            self.v_buffer = _zeros(dims, shape.dtype, self.device)
        # (K, V) views of each layer, made once: the buffers are never reallocated, and a
        # view per call cost four `select`s per layer of a decode step.
        self._layers = list(zip(self.k_buffer.unbind(0), self.v_buffer.unbind(0), strict=True))
        # The _top free pages live in _free_pages[num_pages - _top:], next to go first: alloc
        # takes from the front and free puts back in front, so a freed block returns in order.
        self._free_pages = torch.empty(self.num_pages, dtype=torch.int64, device=self.device)
        self._top = 0
        # Debug only: which page ids are currently allocated (page 0 never is).
        self._allocated: torch.Tensor | None = None
        self._page_offsets = torch.arange(page_size, dtype=torch.int64, device=self.device)
        # After track_writes(): the token and position each slot's K/V was last written for.
        self.ledger: SlotLedger | None = None
        self.clear()

    @classmethod
    def for_model(
        cls,
        config: ModelConfig,
        dtype: torch.dtype,
        device: torch.device | str,
        *,
        max_total_tokens: int | None = None,
        mem_fraction: float | None = None,
        model_bytes: int = 0,
        page_size: int = 1,
        debug: bool = False,
        head_major: bool = False,
    ) -> KVPool:
        """A pool shaped for `config`, sized by `max_total_tokens` or by `mem_fraction`.

        Exactly one of the two sizes must be given; see `tokens_for_budget` for
        how `mem_fraction` and `model_bytes` set the size.
        """
        shape = PoolShape.of(config, dtype)
        if (max_total_tokens is None) == (mem_fraction is None):
            raise ValueError("give exactly one of max_total_tokens and mem_fraction")
        if mem_fraction is not None:
            device = torch.device(device)
            max_total_tokens = tokens_for_budget(
                shape, device, mem_fraction, model_bytes, page_size
            )
            if max_total_tokens < page_size:
                raise ValueError(f"mem_fraction={mem_fraction} leaves no memory for the KV pool")
        assert max_total_tokens is not None
        return cls(shape, max_total_tokens, device, page_size, debug, head_major)

    # -- sizes ---------------------------------------------------------------

    @property
    def total(self) -> int:
        """Usable slots (the reserved padding page excluded)."""
        return self.num_pages * self.page_size

    def available_size(self) -> int:
        """Free slots (always a whole number of pages)."""
        return self._top * self.page_size

    def pages_for(self, num_tokens: int) -> int:
        """Pages that `alloc(num_tokens)` takes."""
        return -(-num_tokens // self.page_size)

    # -- allocator -----------------------------------------------------------

    def alloc(self, n: int) -> torch.Tensor | None:
        """Slot indices ([n] int64, on the pool device) for n tokens, or None if too few free.

        The slots fill whole pages from their first slot; the unused tail of the
        last page stays reserved until that page is freed.
        """
        if n < 0:
            raise ValueError("cannot allocate a negative number of slots")
        need = self.pages_for(n)
        if need > self._top:
            return None
        start = self.num_pages - self._top
        pages = self._free_pages[start : start + need].clone()  # a fresh pool: 1, 2, 3, ...
        self._top -= need
        if self._allocated is not None:
            self._allocated[pages] = True
        if self.page_size == 1:
            return pages
        slots = pages.unsqueeze(1) * self.page_size + self._page_offsets  # [need, page_size]
        return slots.reshape(-1)[:n]

    def free(self, indices: torch.Tensor) -> None:
        """Return the pages holding `indices` (int slot ids) to the free stack.

        With page_size > 1 every page touched is freed whole: free a page's
        slots in one call, never some of them now and the rest later.
        """
        if indices.numel() == 0:
            return
        if indices.dtype != torch.int64 or indices.dim() != 1 or indices.device != self.device:
            indices = indices.to(device=self.device, dtype=torch.int64).reshape(-1)
        # Page ids; with page_size 1 a page is a slot.
        pages = indices if self.page_size == 1 else torch.unique(indices // self.page_size)
        if self._allocated is not None:
            self._check_free(indices, pages)
            self._allocated[pages] = False
        start = self.num_pages - self._top
        self._free_pages[start - pages.numel() : start] = pages
        self._top += pages.numel()

    def _check_free(self, indices: torch.Tensor, pages: torch.Tensor) -> None:
        assert self._allocated is not None
        if int(indices.min()) < self.page_size or int(indices.max()) >= self.k_buffer.shape[1]:
            raise PoolError("freeing a slot outside the pool's usable range")
        if torch.unique(indices).numel() != indices.numel():
            raise PoolError("the same slot appears twice in one free()")
        if not bool(self._allocated[pages].all()):
            raise PoolError("freeing a slot that is not allocated (double free or never allocated)")

    def clear(self) -> None:
        """Mark every slot free. Anything still referencing slots must be dropped first."""
        torch.arange(1, self.num_pages + 1, out=self._free_pages)  # page 1 goes first
        self._top = self.num_pages
        if self.debug:
            self._allocated = torch.zeros(self.num_pages + 1, dtype=torch.bool, device=self.device)

    def track_writes(self) -> None:
        """Keep a `SlotLedger` from now on: every K/V writer must record in `ledger`."""
        self.ledger = SlotLedger(self.k_buffer.shape[1])

    def free_page_ids(self) -> torch.Tensor:
        """Ids of the free pages ([available_size() // page_size] int64), a copy."""
        return self._free_pages[self.num_pages - self._top :].clone()

    def free_slots(self) -> torch.Tensor:
        """All free slot ids ([available_size()] int64): for integrity checks, not the hot path."""
        pages = self._free_pages[self.num_pages - self._top :]
        if self.page_size == 1:
            return pages.clone()
        return (pages.unsqueeze(1) * self.page_size + self._page_offsets).reshape(-1)

    def allocated_mask(self) -> torch.Tensor | None:
        """Debug mode: a bool per page id (index 0 = reserved page), True when allocated."""
        return None if self._allocated is None else self._allocated.clone()

    # -- K/V storage ---------------------------------------------------------

    def set_kv(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write k, v ([n, num_kv_heads, head_dim]) of layer `layer` into slots ([n] int64)."""
        k_layer, v_layer = self._layers[layer]
        k_layer.index_copy_(0, slots, k.to(self.shape.dtype))
        v_layer.index_copy_(0, slots, v.to(self.shape.dtype))

    def get_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views (K, V) of layer `layer`, each [num_slots, num_kv_heads, head_dim].

        Rows are indexed by slot id; a slot's row is meaningful only while the
        slot is allocated and after its K/V were written.
        """
        return self._layers[layer]

    def flat_rows(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, V) of layer `layer` as [slots * Hkv, D] rows, row `slot * Hkv + h`: views
        of a slot-major pool, valid as `get_kv`'s. A head-major pool returns copies of
        the whole layer (correct, but a pool is made head-major only where the native
        kernels attend every batch and this is never called in a step)."""
        k, v = self._layers[layer]
        d = self.shape.head_dim
        return k.reshape(-1, d), v.reshape(-1, d)
