"""What each KV slot was last written for: (token id, position), a debug-mode record.

The slot accounting (`integrity`) proves no slot is lost or held twice; it cannot
prove a slot holds the K/V the tree says it does. The ledger can: every write of a
slot's K/V (a forward, a reload from a lower cache tier) records the token and
position it was computed for, and `mismatches` compares that record with the
tree's claim for every cached slot. Under tensor parallelism each rank keeps its
own ledger from the plans it ran, so the same check proves every rank's shard of a
cached slot was written for the same token (`ModelRunner.slot_mismatches`).

Costs two int64 tensors of one entry per slot and two index writes per forward;
pools keep one only in debug mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEVER = -1  # a slot's entry before its first write


@dataclass
class SlotContents:
    """The tree's claim: slot `slots[i]` holds token `tokens[i]` at `positions[i]`.

    Three [n] int64 tensors on the CPU; what `RadixCache.slot_contents` returns.
    """

    slots: torch.Tensor
    tokens: torch.Tensor
    positions: torch.Tensor

    @classmethod
    def empty(cls) -> SlotContents:
        none = torch.empty(0, dtype=torch.int64)
        return cls(none, none, none)


class SlotLedger:
    """Token id and position last written into each of `rows` slots (CPU tensors)."""

    def __init__(self, rows: int) -> None:
        self.tokens = torch.full((rows,), NEVER, dtype=torch.int64)
        self.positions = torch.full((rows,), NEVER, dtype=torch.int64)

    def record(self, slots: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor) -> None:
        """Slots `slots` ([n] int64) now hold the K/V of `tokens` at `positions` ([n] each)."""
        slots = slots.cpu()
        self.tokens[slots] = tokens.to("cpu", torch.int64)
        self.positions[slots] = positions.to("cpu", torch.int64)

    def mismatches(self, claim: SlotContents) -> int:
        """How many of the claimed slots were last written for another token or position."""
        if claim.slots.numel() == 0:
            return 0
        wrong = (self.tokens[claim.slots] != claim.tokens) | (
            self.positions[claim.slots] != claim.positions
        )
        return int(wrong.sum())
