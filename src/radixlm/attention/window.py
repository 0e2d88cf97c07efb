"""Attention with a sliding window and/or logit soft-capping, over keys at any pool slots.

The KV pool (and so the radix cache) keeps every token's K/V; a layer with a
window W masks, for the query at position p, every key at a position l with
p - l >= W (transformers' rule: l > p - W). Each sequence therefore reads only
its last `W - 1 + extend` keys, from `first = max(0, prefix - W + 1)` on,
whatever the prefix length: a prefix cached by a short request serves a longer
one unchanged, in prefill, extend over a cached prefix, and decode alike.

Soft-capping (Gemma 2) changes the scores before the softmax, which the fused
attention kernels cannot do, so capped layers compute the scores explicitly.
Capped layers, and windowed layers outside decode, bypass the cascade and the
native decode kernel; a decode batch of an uncapped window layer runs the native
kernel over each sequence's last W slots (`window_decode_index`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from radixlm.kvcache.pool import PAD_SLOT

SCORE_ELEMENTS = 1 << 24  # explicit (soft-capped) scores held at once: 64 MiB in float32


def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
    softcap: float | None,
) -> torch.Tensor:
    """q [b, H, n, D] over k, v [b, Hkv, L, D] where mask [b, n, L] (True = visible).

    Every query row must see at least one key. Returns [b, H, n, D] in q's dtype.
    """
    k, v = k.to(q.dtype), v.to(q.dtype)
    if softcap is None:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask.unsqueeze(1), scale=scale, enable_gqa=True
        )
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    b, h, n, _ = q.shape
    # explicit scores [b, H, rows, L] for at most SCORE_ELEMENTS at a time (long prefills)
    rows = max(1, SCORE_ELEMENTS // max(1, b * h * k.shape[2]))
    out = []
    for start in range(0, n, rows):  # query chunks, not tokens: one pass for short inputs
        qc, mc = q[:, :, start : start + rows], mask[:, start : start + rows]
        scores = torch.matmul(qc, k.transpose(-1, -2)) * scale
        scores = torch.tanh(scores / softcap) * softcap
        scores = scores.masked_fill(~mc.unsqueeze(1), float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out.append(torch.matmul(probs, v))
    return out[0] if len(out) == 1 else torch.cat(out, dim=2)


def visible(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """[..., n, L] bool: key at k_pos [..., L] visible to the query at q_pos [..., n]."""
    diff = q_pos.unsqueeze(-1) - k_pos.unsqueeze(-2)
    ok = diff >= 0
    return ok if window is None else ok & (diff < window)


@dataclass(frozen=True)
class WindowGroup:
    """One padded attention call over `batch` sequences of a forward.

    q_index [b * Qmax] flat-batch rows of the queries (padding -> row 0);
    kv_slots [b, L] pool slots of the keys (padding -> PAD_SLOT);
    mask [b, Qmax, L]; out_rows [n] rows of the padded output that are real queries,
    t_index [n] their flat-batch rows.
    """

    q_index: torch.Tensor
    kv_slots: torch.Tensor
    mask: torch.Tensor
    out_rows: torch.Tensor
    t_index: torch.Tensor
    q_len: int


def plan_window_groups(
    kv_indices: torch.Tensor,
    kv_indptr: list[int],
    prefix_lens: tuple[int, ...],
    extend_lens: tuple[int, ...],
    window: int | None,
) -> tuple[WindowGroup, ...]:
    """The padded calls of a forward for one window (None: full causal).

    Decode sequences (one new token) and the others go in separate calls, so a
    long prefill does not pad every decode query to its length.
    """
    starts = [0]
    for e in extend_lens:
        starts.append(starts[-1] + e)
    decode = [i for i, e in enumerate(extend_lens) if e == 1]
    other = [i for i, e in enumerate(extend_lens) if e != 1]
    groups = []
    for members in (decode, other):
        if members:
            groups.append(_build(members, kv_indices, kv_indptr, prefix_lens, extend_lens,
                                 starts, window))  # fmt: skip
    return tuple(groups)


def _build(
    members: list[int],
    kv_indices: torch.Tensor,
    kv_indptr: list[int],
    prefix: tuple[int, ...],
    extend: tuple[int, ...],
    starts: list[int],
    window: int | None,
) -> WindowGroup:
    dev = kv_indices.device
    first = [0 if window is None else max(0, prefix[i] - window + 1) for i in members]
    n_keys = [prefix[i] + extend[i] - f for i, f in zip(members, first, strict=True)]
    q_len, kv_len = max(extend[i] for i in members), max(n_keys)
    b = len(members)
    kv_slots = torch.full((b, kv_len), PAD_SLOT, dtype=torch.int64, device=dev)
    k_pos = torch.full((b, kv_len), 2**40, dtype=torch.int64, device=dev)  # pads: in the future
    for r, (i, f, n) in enumerate(zip(members, first, n_keys, strict=True)):
        base = kv_indptr[i] + f
        kv_slots[r, :n] = kv_indices[base : base + n]
        k_pos[r, :n] = torch.arange(f, f + n, device=dev)
    j = torch.arange(q_len, device=dev)
    pre = torch.tensor([prefix[i] for i in members], device=dev)
    ext = torch.tensor([extend[i] for i in members], device=dev)
    real = j.unsqueeze(0) < ext.unsqueeze(1)  # [b, Qmax]
    mask = visible(pre.unsqueeze(1) + j, k_pos, window)  # [b, Qmax, L]
    mask[..., 0] |= ~real  # padded queries see one key (no all -inf rows)
    start = torch.tensor([starts[i] for i in members], device=dev)
    q_index = torch.where(real, start.unsqueeze(1) + j, 0).reshape(-1)
    out_rows = real.reshape(-1).nonzero().squeeze(1)
    return WindowGroup(q_index, kv_slots, mask, out_rows, q_index[out_rows], q_len)


class WindowPlans:
    """The index tensors of one forward's window layers, built on first use per window.

    `metadata` is the forward's `PagedAttentionMetadata` (kv_indices, kv_indptr,
    prefix_lens, extend_lens are read). Valid for that forward only.
    """

    def __init__(self, metadata) -> None:
        self.metadata = metadata
        self._groups: dict[int | None, tuple[WindowGroup, ...]] = {}
        self._decode: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def groups(self, window: int | None) -> tuple[WindowGroup, ...]:
        """The padded calls for layers with this window (None: full, soft-capped)."""
        if window not in self._groups:
            m = self.metadata
            self._groups[window] = plan_window_groups(
                m.kv_indices, m.kv_indptr.tolist(), m.prefix_lens, m.extend_lens, window
            )
        return self._groups[window]

    def decode_index(self, window: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The native decode kernel's index of each sequence's last `window` keys."""
        if window not in self._decode:
            m = self.metadata
            self._decode[window] = window_decode_index(m.kv_indices, m.kv_indptr, window)
        return self._decode[window]


def window_decode_index(
    kv_indices: torch.Tensor, kv_indptr: torch.Tensor, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """([B + 1] indptr, [n] slots) of each sequence's last `window` slots: the keys a
    decode token (the sequence's last) sees, in the native decode kernel's form."""
    bounds = kv_indptr.tolist()
    own = [kv_indices[max(a, b - window) : b] for a, b in itertools.pairwise(bounds)]
    lens = torch.tensor([len(o) for o in own], dtype=torch.int64, device=kv_indices.device)
    return F.pad(torch.cumsum(lens, 0), (1, 0)), torch.cat(own)


def attend_window_groups(
    groups: tuple[WindowGroup, ...],
    q: torch.Tensor,
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    scale: float,
    softcap: float | None,
) -> torch.Tensor:
    """Attention of the flat batch q [T, H, D] over pool K/V [slots, Hkv, D]; [T, H, D]."""
    h, d = q.shape[1], q.shape[2]
    out = q.new_empty(q.shape)
    for g in groups:
        b = g.kv_slots.shape[0]
        qg = q.index_select(0, g.q_index).view(b, g.q_len, h, d).transpose(1, 2)
        kg = k_buf[g.kv_slots].transpose(1, 2)  # [b, Hkv, L, D]
        vg = v_buf[g.kv_slots].transpose(1, 2)
        o = masked_attention(qg, kg, vg, g.mask, scale, softcap)  # [b, H, Qmax, D]
        o = o.transpose(1, 2).reshape(b * g.q_len, h, d)
        out.index_copy_(0, g.t_index, o.index_select(0, g.out_rows))
    return out
