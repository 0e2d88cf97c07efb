"""Paged attention over the shared KV pool, in plain torch (CPU, or CUDA without kernels).

One forward covers a flat batch of B sequences. Sequence i has `prefix_lens[i]`
tokens whose K/V are already in the pool and `extend_lens[i]` new tokens
(1 for a decode step, more for a prefill/"extend"); `seq_slots[i]` lists the
pool slots of all `prefix_lens[i] + extend_lens[i]` tokens in order, and
`out_cache_loc` ([T] int64) the new tokens' slots in flat-batch order, so
`seq_slots[i][prefix_lens[i]:]` is sequence i's segment of `out_cache_loc`.

Each layer: write the new K/V at `out_cache_loc`, then for every *group* of
sequences gather their K/V into a padded `[b, Hkv, Lmax, D]` block (one
`index_select` with a precomputed flat index), pad the queries to
`[b, H, Qmax, D]`, and run one `scaled_dot_product_attention` with a boolean
mask (key l visible to query j of sequence i iff l <= prefix_i + j and
l < seq_len_i), GQA through `enable_gqa`. Padded key rows point at the pool's
reserved `PAD_SLOT` and are masked out.

Sequences are grouped so that padding wastes little: all index tensors and
masks are built once per forward in `PagedAttentionMetadata.build`, not per
layer, and the gathered blocks land in a workspace reused across layers and
forwards (fresh 50 MB tensors per layer cost page faults that doubled decode).
The metadata also keeps the CSR form (`qo_indptr`, `kv_indptr`, `kv_indices`)
that a fused CUDA kernel would consume.

Sequences that share a long run of leading cached slots (requests the radix
cache served from one prefix) are attended in two parts, see
`attention.cascade`: the shared run once per group, each member's own keys in
padded groups as above, merged exactly by log-sum-exp.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from radixlm.attention.base import AttentionContext
from radixlm.attention.cascade import (
    SharedBatch,
    SharedPrefix,
    build_shared_batch,
    find_shared_prefixes,
    merge_partials,
    padded_attention_lse,
    plan_shared_batches,
    split_shared,
)
from radixlm.kvcache.pool import PAD_SLOT, KVPool

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
    is_causal: use SDPA's own causal mask instead (one sequence, no prefix).
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


@dataclass(frozen=True)
class PagedAttentionMetadata:
    """Everything a paged attention backend needs for one forward, built once.

    positions:  [T] int64 position of every new token in its sequence.
    last_token_indices: [B] int64 flat-batch row of each sequence's last new token.
    qo_indptr:  [B + 1] int64 offsets of each sequence's new tokens in the flat batch.
    kv_indptr:  [B + 1] int64 offsets of each sequence's slots in `kv_indices`.
    kv_indices: [sum(seq_lens)] int64 every sequence's slots, concatenated.
    groups:     padded attention calls; a shared-prefix member appears in one over its
                own keys [shared_len, seq_len) only.
    shared:     groups of sequences whose leading cached slots are attended once per group,
    shared_batches: their shared runs, batched into padded calls.
    """

    prefix_lens: tuple[int, ...]
    extend_lens: tuple[int, ...]
    num_kv_heads: int
    out_cache_loc: torch.Tensor
    positions: torch.Tensor
    last_token_indices: torch.Tensor
    qo_indptr: torch.Tensor
    kv_indptr: torch.Tensor
    kv_indices: torch.Tensor
    groups: tuple[AttentionGroup, ...]
    shared: tuple[SharedPrefix, ...] = ()
    shared_batches: tuple[SharedBatch, ...] = ()

    @property
    def seq_lens(self) -> tuple[int, ...]:
        return tuple(p + e for p, e in zip(self.prefix_lens, self.extend_lens, strict=True))

    @property
    def num_tokens(self) -> int:
        return sum(self.extend_lens)

    @classmethod
    def build(
        cls,
        seq_slots: Sequence[torch.Tensor],
        prefix_lens: Sequence[int],
        extend_lens: Sequence[int],
        out_cache_loc: torch.Tensor,
        num_kv_heads: int,
        device: torch.device,
        check: bool = False,
        cascade: bool = True,
    ) -> PagedAttentionMetadata:
        """Validate the batch description and precompute every index tensor and mask.

        With `check`, also verify that each sequence's new slots equal its
        segment of `out_cache_loc` (this reads the tensors: a device sync on CUDA).
        With `cascade`, attend runs of leading slots shared by several sequences
        once per group (see `attention.cascade`; detecting them reads the slot
        tensors: a device sync on CUDA).
        """
        prefix, extend = tuple(map(int, prefix_lens)), tuple(map(int, extend_lens))
        slots = [s.to(device=device, dtype=torch.int64).reshape(-1) for s in seq_slots]
        out_cache_loc = out_cache_loc.to(device=device, dtype=torch.int64).reshape(-1)
        _validate(slots, prefix, extend, out_cache_loc, check)
        dev = dict(device=device, dtype=torch.int64)
        ext_t = torch.tensor(extend, **dev)
        qo_indptr = F.pad(torch.cumsum(ext_t, 0), (1, 0))
        seq_t = torch.tensor([p + e for p, e in zip(prefix, extend, strict=True)], **dev)
        kv_indptr = F.pad(torch.cumsum(seq_t, 0), (1, 0))
        t = sum(extend)
        # position of token r = prefix of its sequence + (r - start of its sequence)
        starts = torch.repeat_interleave(qo_indptr[:-1], ext_t, output_size=t)
        base = torch.repeat_interleave(torch.tensor(prefix, **dev), ext_t, output_size=t)
        positions = base + torch.arange(t, **dev) - starts
        starts_list = [0]
        for e in extend:
            starts_list.append(starts_list[-1] + e)
        found = find_shared_prefixes(slots, prefix) if cascade else []
        groups = _plan(slots, prefix, extend, starts_list, found, num_kv_heads, device)
        # shared runs of similar length share one padded call
        batches = plan_shared_batches([g.shared_len for g in found])
        shared_batches = tuple(
            build_shared_batch([found[j] for j in b], slots, starts_list, extend, num_kv_heads)
            for b in batches
        )
        return cls(
            prefix_lens=prefix,
            extend_lens=extend,
            num_kv_heads=num_kv_heads,
            out_cache_loc=out_cache_loc,
            positions=positions,
            last_token_indices=qo_indptr[1:] - 1,
            qo_indptr=qo_indptr,
            kv_indptr=kv_indptr,
            kv_indices=torch.cat(slots) if slots else torch.empty(0, **dev),
            groups=groups,
            shared=tuple(found),
            shared_batches=shared_batches,
        )


def _plan(
    slots: list[torch.Tensor],
    prefix: tuple[int, ...],
    extend: tuple[int, ...],
    starts: list[int],
    found: list[SharedPrefix],
    num_kv_heads: int,
    device: torch.device,
) -> tuple[AttentionGroup, ...]:
    """The padded groups of a batch.

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
                _build_group(members, own, own_prefix, extend, starts, num_kv_heads, device,
                             whole, with_lse)
            )  # fmt: skip
    return tuple(groups)


def _validate(
    slots: list[torch.Tensor],
    prefix: tuple[int, ...],
    extend: tuple[int, ...],
    out_cache_loc: torch.Tensor,
    check: bool,
) -> None:
    if not len(slots) == len(prefix) == len(extend):
        raise ValueError("need one slot list, prefix length and extend length per sequence")
    if any(e < 1 for e in extend) or any(p < 0 for p in prefix):
        raise ValueError("every sequence needs >= 1 new token and a prefix length >= 0")
    for i, (s, p, e) in enumerate(zip(slots, prefix, extend, strict=True)):
        if s.numel() != p + e:
            raise ValueError(f"sequence {i}: {s.numel()} slots for {p} + {e} tokens")
    if out_cache_loc.numel() != sum(extend):
        raise ValueError(
            f"out_cache_loc has {out_cache_loc.numel()} slots for {sum(extend)} tokens"
        )
    if check and slots:
        new = torch.cat([s[p:] for s, p in zip(slots, prefix, strict=True)])
        if not torch.equal(new, out_cache_loc):
            raise ValueError("seq_slots' new tokens disagree with out_cache_loc")


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


def _build_group(
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
    is_causal = not with_lse and b == 1 and prefix[members[0]] == 0 and q_len > 1
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


class GatherWorkspace:
    """Reusable buffers for the gathered K/V of a forward, grown on demand.

    Gathering into fresh tensors costs more than the gather itself on CPU
    (tens of MB of new pages per layer), so every context over the same pool
    shares one workspace. Contents are scratch: valid only inside one `attend`,
    so run one forward at a time per pool (the engine's loop does).
    """

    def __init__(self) -> None:
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    def buffers(self, rows: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two [rows, like.shape[1]] tensors of like's dtype and device (views of the buffers)."""
        width = like.shape[1]
        if self._k is None or self._k.dtype != like.dtype or self._k.numel() < rows * width:
            self._k = like.new_empty(rows * width)
            self._v = like.new_empty(rows * width)
        assert self._v is not None
        return self._k[: rows * width].view(rows, width), self._v[: rows * width].view(rows, width)


_WORKSPACES: weakref.WeakKeyDictionary[KVPool, GatherWorkspace] = weakref.WeakKeyDictionary()


def workspace_for(pool: KVPool) -> GatherWorkspace:
    """The gather workspace shared by every context over `pool`."""
    ws = _WORKSPACES.get(pool)
    if ws is None:
        ws = _WORKSPACES[pool] = GatherWorkspace()
    return ws


class PagedContext(AttentionContext):
    """Attention for one forward whose K/V live at arbitrary slots of a `KVPool`.

    Build it once per forward; the model calls `attend` once per layer. The
    pool slots in `seq_slots` must be allocated (prefix slots locked in the
    prefix cache) for the whole forward. See the module docstring for the inputs.
    """

    def __init__(
        self,
        pool: KVPool,
        seq_slots: Sequence[torch.Tensor],
        prefix_lens: Sequence[int],
        extend_lens: Sequence[int],
        out_cache_loc: torch.Tensor,
        check: bool = False,
        cascade: bool = True,
    ) -> None:
        self.pool = pool
        self.workspace = workspace_for(pool)
        self.metadata = PagedAttentionMetadata.build(
            seq_slots, prefix_lens, extend_lens, out_cache_loc,
            pool.shape.num_kv_heads, pool.device, check, cascade,
        )  # fmt: skip

    @property
    def extend_lens(self) -> list[int]:
        return list(self.metadata.extend_lens)

    @property
    def positions(self) -> torch.Tensor:
        """[T] int64 positions of the new tokens (what the model's `positions` should be)."""
        return self.metadata.positions

    def attend(
        self, layer_id: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
    ) -> torch.Tensor:
        meta = self.metadata
        self.pool.set_kv(layer_id, meta.out_cache_loc, k, v)
        k_buf, v_buf = self.pool.get_kv(layer_id)
        d = k_buf.shape[-1]
        k_rows, v_rows = k_buf.view(-1, d), v_buf.view(-1, d)  # [slots * Hkv, D]
        if len(meta.groups) == 1 and meta.groups[0].out_index is None:
            return self._attend_group(meta.groups[0], q, k_rows, v_rows, scale)
        out = q.new_empty(q.shape)
        # [T, H] LSE of each shared-prefix member's own-key attention (other rows unused)
        lse = q.new_empty(q.shape[:2], dtype=torch.float32) if meta.shared else None
        for g in meta.groups:
            assert g.out_index is not None and g.t_index is not None
            if g.with_lse:
                assert lse is not None
                assert g.q_index is not None
                k_buf, v_buf = self._gather(g.kv_index, k_rows, v_rows)
                shape = (g.batch, g.q_len, g.kv_len)
                o, g_lse = padded_attention_lse(q, g.q_index, k_buf, v_buf, shape, g.hidden, scale)
                lse.index_copy_(0, g.t_index, g_lse.index_select(0, g.out_index))
            else:
                o = self._attend_group(g, q, k_rows, v_rows, scale)  # [b * Qmax, H, D]
            out.index_copy_(0, g.t_index, o.index_select(0, g.out_index))
        for sb in meta.shared_batches:  # merge in the shared runs' part
            assert lse is not None
            k_buf, v_buf = self._gather(sb.kv_index, k_rows, v_rows)
            shape = (sb.batch, sb.q_len, sb.kv_len)
            o, s_lse = padded_attention_lse(q, sb.q_index, k_buf, v_buf, shape, sb.hidden, scale)
            o, s_lse = o.index_select(0, sb.out_index), s_lse.index_select(0, sb.out_index)
            merge_partials(out, lse, sb.t_index, o, s_lse)
        return out

    def _gather(
        self, kv_index: torch.Tensor, k_rows: torch.Tensor, v_rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V rows at `kv_index` into the workspace; returns two [len(kv_index), D] views."""
        k_buf, v_buf = self.workspace.buffers(kv_index.numel(), k_rows)
        torch.index_select(k_rows, 0, kv_index, out=k_buf)
        torch.index_select(v_rows, 0, kv_index, out=v_buf)
        return k_buf, v_buf

    def _attend_group(
        self,
        g: AttentionGroup,
        q: torch.Tensor,
        k_rows: torch.Tensor,
        v_rows: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        """Padded attention of one group; returns [b * Qmax, H, D] in q's dtype."""
        h, d = q.shape[1], q.shape[2]
        hkv = self.metadata.num_kv_heads
        qg = q if g.q_index is None else q.index_select(0, g.q_index)
        qg = qg.reshape(g.batch, g.q_len, h, d).transpose(1, 2)  # [b, H, Qmax, D]
        k_buf, v_buf = self._gather(g.kv_index, k_rows, v_rows)
        kg = k_buf.view(g.batch, hkv, g.kv_len, d)  # [b, Hkv, L, D]
        vg = v_buf.view(g.batch, hkv, g.kv_len, d)
        o = F.scaled_dot_product_attention(
            qg, kg.to(q.dtype), vg.to(q.dtype),
            attn_mask=g.mask, is_causal=g.is_causal, scale=scale, enable_gqa=True,
        )  # fmt: skip
        return o.transpose(1, 2).reshape(g.batch * g.q_len, h, d)
