"""Padded attention groups: which sequences share one padded SDPA call, and its index tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from radixlm.attention.cascade import SharedPrefix, split_shared
from radixlm.kvcache.pool import PAD_SLOT

# Grouping: a group's padded work (count * Qmax * Lmax) may exceed its real work
# (sum q_i * l_i) by this factor plus this many query-key pairs.
PAD_WASTE_FACTOR = 1.5
PAD_WASTE_SLACK = 16384


@dataclass(frozen=True)
class AttentionGroup:
    """Sequences attended by one padded SDPA call; all tensors on the pool device.

    q_index:   [b * q_len] flat-batch rows gathered into the padded queries
               (padding rows repeat a real row of the same sequence); None when
               the queries are the flat batch as is.
    kv_index:  [b * num_kv_heads * kv_len] rows of a layer's K (or V) viewed as
               [num_slots * num_kv_heads, head_dim]; sequence-major, then head, then token.
    mask:      [b, 1, q_len, kv_len] bool (True = attend), or None when no mask is needed.
    is_causal: use SDPA's own causal mask instead (members of one length, no prefix).
    out_index: [n] rows of the padded output [b * q_len] that are real tokens,
    t_index:   [n] the flat-batch rows they go to; both None when the group is the
               whole batch in order without padding (the output is used as is).
    with_lse:  the group holds the own keys of shared-prefix members: attend with
               `attention_lse` (mask in `hidden`, not `mask`) so the result can be merged.
    hidden:    [b, 1, q_len, 1, kv_len] bool (True = hidden) for `with_lse` groups, or None.
    """

    batch: int
    q_len: int
    kv_len: int
    q_index: torch.Tensor | None
    kv_index: torch.Tensor
    mask: torch.Tensor | None
    is_causal: bool
    out_index: torch.Tensor | None
    t_index: torch.Tensor | None
    with_lse: bool = False
    hidden: torch.Tensor | None = None


def plan_groups(q_lens: Sequence[int], kv_lens: Sequence[int]) -> list[list[int]]:
    """Partition sequences into groups that one padded SDPA call each can serve.

    Sequences are taken longest first (by new tokens, then context); a group
    grows while its padded work stays within PAD_WASTE_FACTOR of its real
    work plus PAD_WASTE_SLACK. Returns lists of sequence indices.
    """
    order = sorted(range(len(q_lens)), key=lambda i: (-q_lens[i], -kv_lens[i], i))
    groups: list[list[int]] = []
    qmax = kvmax = real = 0
    for i in order:
        q, kv = q_lens[i], kv_lens[i]
        if groups:
            count = len(groups[-1]) + 1
            padded = count * max(qmax, q) * max(kvmax, kv)
            if padded <= PAD_WASTE_FACTOR * (real + q * kv) + PAD_WASTE_SLACK:
                groups[-1].append(i)
                qmax, kvmax, real = max(qmax, q), max(kvmax, kv), real + q * kv
                continue
        groups.append([i])
        qmax, kvmax, real = q, kv, q * kv
    return [sorted(g) for g in groups]


def build_group(
    members: list[int],
    slots: list[torch.Tensor],
    prefix: tuple[int, ...],
    extend: tuple[int, ...],
    starts: list[int],
    num_kv_heads: int,
    device: torch.device,
    whole: bool,
    with_lse: bool = False,
) -> AttentionGroup:
    """Index tensors and mask of one group (see AttentionGroup for the shapes).

    `whole`: the group is the entire batch in order without query padding.
    `with_lse`: the group is attended by `attention_lse` (mask as `hidden`, no causal flag).
    """
    dev = dict(device=device, dtype=torch.int64)
    b = len(members)
    pre = torch.tensor([prefix[i] for i in members], **dev)  # [b]
    ext = torch.tensor([extend[i] for i in members], **dev)  # [b]
    start = torch.tensor([starts[i] for i in members], **dev)  # [b]
    q_len = max(extend[i] for i in members)
    kv_len = max(prefix[i] + extend[i] for i in members)
    q_pos = torch.arange(q_len, **dev).unsqueeze(0)  # [1, Qmax]
    q_index = start.unsqueeze(1) + torch.minimum(q_pos, ext.unsqueeze(1) - 1)  # [b, Qmax]
    # [b, Lmax] slots, padded with the reserved slot, then one row per (seq, head, token)
    padded = pad_sequence([slots[i] for i in members], batch_first=True, padding_value=PAD_SLOT)
    heads = torch.arange(num_kv_heads, **dev).view(1, num_kv_heads, 1)
    kv_index = (padded.unsqueeze(1) * num_kv_heads + heads).reshape(-1)
    seq_len = pre + ext
    # Every member a whole new sequence of q_len tokens: no padding, q_len == kv_len, so
    # SDPA's own (top-left) causal mask is exact, and its kernel skips the masked half.
    is_causal = not with_lse and q_len > 1 and all(
        prefix[i] == 0 and extend[i] == q_len for i in members
    )
    mask = hidden = None
    uniform = all(prefix[i] + extend[i] == kv_len for i in members)
    if not is_causal and (q_len > 1 or not uniform):
        k_pos = torch.arange(kv_len, **dev).view(1, 1, kv_len)  # [1, 1, Lmax]
        visible = (k_pos <= (pre.view(b, 1, 1) + q_pos.unsqueeze(2))) & (
            k_pos < seq_len.view(b, 1, 1)
        )  # [b, Qmax, Lmax]
        if with_lse:
            hidden = (~visible).view(b, 1, q_len, 1, kv_len)
        else:
            mask = visible.unsqueeze(1)
    out_index = t_index = None
    if not whole:
        real = (q_pos < ext.unsqueeze(1)).reshape(-1)  # [b * Qmax]
        out_index = torch.nonzero(real).squeeze(1)
        t_index = (start.unsqueeze(1) + q_pos).reshape(-1)[real]
    return AttentionGroup(
        batch=b,
        q_len=q_len,
        kv_len=kv_len,
        q_index=None if whole else q_index.reshape(-1),
        kv_index=kv_index,
        mask=mask,
        is_causal=is_causal,
        out_index=out_index,
        t_index=t_index,
        with_lse=with_lse,
        hidden=hidden,
    )


def plan_batch(
    slots: list[torch.Tensor],
    prefix: tuple[int, ...],
    extend: tuple[int, ...],
    starts: list[int],
    found: list[SharedPrefix],
    num_kv_heads: int,
    device: torch.device,
) -> tuple[AttentionGroup, ...]:
    """The padded groups of a batch (the torch path of `PagedAttentionMetadata`).

    `found`: the shared groups. A member of a group sharing C slots is padded
    like a sequence with slots[C:] and prefix p - C, in groups of their own
    that return the LSE.
    """
    own, own_prefix, plain, members_of_shared = split_shared(slots, prefix, found)
    groups = []
    for subset, with_lse in ((plain, False), (members_of_shared, True)):
        plan = plan_groups([extend[i] for i in subset], [own_prefix[i] + extend[i] for i in subset])
        # One plain group covering the batch in order without query padding needs no scatter.
        whole = not found and len(plan) == 1 and len(set(extend)) == 1
        for local in plan:
            members = [subset[j] for j in local]
            groups.append(
                build_group(members, own, own_prefix, extend, starts, num_kv_heads, device,
                             whole, with_lse)
            )  # fmt: skip
    return tuple(groups)
