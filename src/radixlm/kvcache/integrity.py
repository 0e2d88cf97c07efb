"""Slot accounting shared by the prefix caches' `check_integrity`.

The invariant, counted in pages (= slots when page_size is 1):

    free pages in the pool + pages cached in the tree + pages held by requests
        == usable pages of the pool,

and no page is in two of those places (or twice in one). A request holds the
slots it allocated itself and has not handed to the cache; the slots of its
locked cached prefix belong to the tree and are not counted again.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from radixlm.kvcache.pool import KVPool
from radixlm.kvcache.prefix_cache import HeldSlots, IntegrityError


def check(condition: bool, message: str) -> None:
    """Raise IntegrityError(message) unless `condition`."""
    if not condition:
        raise IntegrityError(message)


def _held_tensor(held: HeldSlots, device: torch.device) -> torch.Tensor | None:
    if isinstance(held, int):
        return None
    if isinstance(held, torch.Tensor):
        return held.to(device=device, dtype=torch.int64).reshape(-1)
    assert isinstance(held, Sequence)
    parts = [t.to(device=device, dtype=torch.int64).reshape(-1) for t in held]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64, device=device)


def _pages_of(slots: torch.Tensor, page_size: int, what: str) -> torch.Tensor:
    """Page ids of `slots`, after checking no slot repeats."""
    check(torch.unique(slots).numel() == slots.numel(), f"a slot appears twice in {what}")
    return torch.unique(slots // page_size) if page_size > 1 else slots


def check_whole_pages(value: torch.Tensor, page_size: int) -> None:
    """A cached node's slots must be whole pages, each page's slots consecutive from its start."""
    if page_size == 1:
        return
    check(value.numel() % page_size == 0, "cached slots do not fill whole pages")
    rows = value.reshape(-1, page_size)
    expected = rows[:, :1] + torch.arange(page_size, device=value.device)
    check(bool((rows == expected).all()), "cached page slots are not consecutive")
    check(bool((rows[:, 0] % page_size == 0).all()), "cached pages do not start on page boundaries")


def check_slot_accounting(pool: KVPool, tree_slots: torch.Tensor, held: HeldSlots) -> None:
    """Prove free + cached + held == total, with no page in two places.

    tree_slots: every slot the tree holds ([N] int64). held: slots held by live
    requests outside the tree, as a count of slots (whole pages) or as slot
    tensors (then also checked for overlap; partial pages count whole).
    """
    ps = pool.page_size
    tree_slots = tree_slots.to(pool.device)
    if tree_slots.numel():
        check(int(tree_slots.min()) >= ps, "the tree holds a reserved or negative slot")
        check(int(tree_slots.max()) < pool.total + ps, "the tree holds a slot outside the pool")
    tree_pages = _pages_of(tree_slots, ps, "the tree")
    free_pages = pool.free_page_ids()
    held_t = _held_tensor(held, pool.device)
    if held_t is None:
        check(held % ps == 0, "held_by_requests must be a whole number of pages")
        held_pages_n = held // ps
        parts = [free_pages, tree_pages]
    else:
        held_pages = _pages_of(held_t, ps, "the requests' slots")
        held_pages_n = held_pages.numel()
        parts = [free_pages, tree_pages, held_pages]
    counted = free_pages.numel() + tree_pages.numel() + held_pages_n
    check(
        counted == pool.num_pages,
        f"slot leak or double count: free {free_pages.numel() * ps} + cached "
        f"{tree_pages.numel() * ps} + held {held_pages_n * ps} != total {pool.total}",
    )
    every = torch.cat(parts)
    unique = torch.unique(every).numel() == every.numel()
    check(unique, "a slot is in two places (free/cached/held)")
    mask = pool.allocated_mask()
    if mask is not None:
        marked = int(mask.sum())
        check(marked == tree_pages.numel() + held_pages_n, "debug allocation mask disagrees")
        if held_t is not None:
            used = torch.cat(parts[1:])
            check(bool(mask[used].all()), "a cached or held slot is not marked allocated")
