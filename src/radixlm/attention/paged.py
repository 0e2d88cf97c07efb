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

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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
from radixlm.attention.groups import AttentionGroup, plan_batch
from radixlm.attention.window import WindowPlans, attend_window_groups
from radixlm.attention.workspace import workspace_for
from radixlm.config import ModelConfig
from radixlm.kvcache.pool import KVPool
from radixlm.native import kernels


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
    decode:     for a batch of one new token per sequence on the CPU with the native kernel:
                ([B + 1] indptr, [n] pool slots) of each sequence's own keys (all its slots,
                or those after its shared run), read in place by `paged_decode`; then
                `groups` is empty. None otherwise.
    extend:     any other batch whose keys `paged_extend` reads in place (bfloat16 CPU pool
                with the native kernel): `groups` and the shared runs are empty.
    shared_runs: a decode batch's shared runs for `paged_extend` (without the causal mask):
                ([n] flat rows of the members, [G + 1] their offsets per group, [G + 1] key
                offsets, the runs' slots); then `shared_batches` is empty. None otherwise.
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
    decode: tuple[torch.Tensor, torch.Tensor] | None = None
    extend: bool = False
    shared_runs: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

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
        native: bool = True,
        native_extend: bool = False,
    ) -> PagedAttentionMetadata:
        """Validate the batch description and precompute every index tensor and mask.

        With `check`, also verify that each sequence's new slots equal its
        segment of `out_cache_loc` (this reads the tensors: a device sync on CUDA).
        With `cascade`, attend runs of leading slots shared by several sequences
        once per group (see `attention.cascade`; detecting them reads the slot
        tensors: a device sync on CUDA). With `native`, a decode batch on the CPU
        reads its keys in place with the compiled kernel when it is available; with
        `native_extend` (the caller checked the kernel fits the pool), so does any other batch.
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
        is_decode = set(extend) == {1}
        in_place = native_extend and not is_decode  # paged_extend reads every key in place
        found = find_shared_prefixes(slots, prefix) if cascade and not in_place else []
        decode = None
        groups: tuple[AttentionGroup, ...] = ()
        if native and device.type == "cpu" and is_decode and kernels() is not None:
            own = split_shared(slots, prefix, found)[0]
            lens = torch.tensor([len(o) for o in own], **dev)
            decode = (F.pad(torch.cumsum(lens, 0), (1, 0)), torch.cat(own))
        elif not in_place:
            groups = plan_batch(slots, prefix, extend, starts_list, found, num_kv_heads, device)
        shared_runs = None
        if decode is not None and native_extend and found:
            shared_runs = _shared_runs(found, slots, starts_list, device)
        # shared runs of similar length share one padded call
        batches = [] if shared_runs else plan_shared_batches([g.shared_len for g in found])
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
            decode=decode,
            extend=in_place,
            shared_runs=shared_runs,
        )


def _shared_runs(
    found: list[SharedPrefix], slots: list[torch.Tensor], starts: list[int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`PagedAttentionMetadata.shared_runs` of a decode batch's shared groups."""
    dev = dict(device=device, dtype=torch.int64)
    rows = torch.tensor([starts[i] for g in found for i in g.members], **dev)
    qo = F.pad(torch.cumsum(torch.tensor([len(g.members) for g in found], **dev), 0), (1, 0))
    kv = F.pad(torch.cumsum(torch.tensor([g.shared_len for g in found], **dev), 0), (1, 0))
    runs = torch.cat([slots[g.members[0]][: g.shared_len] for g in found])
    return rows, qo, kv, runs


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


def _extend_kernel_builds(dtype: torch.dtype, device: torch.device, head_dim: int) -> bool:
    """Whether `paged_extend` runs here for a pool of `dtype` on `device`: bfloat16 on the
    CPU, and the kernel built for `head_dim`."""
    native = kernels() if torch.device(device).type == "cpu" else None
    if native is None or dtype != torch.bfloat16:
        return False
    return native.paged_extend_supported(head_dim)


def head_major_fits(config: ModelConfig, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a head-major pool suits this model: `paged_extend` fits its bfloat16 CPU pool
    and no layer has a window or soft-capping, so the native kernels attend every batch
    and the torch paths' `KVPool.flat_rows` (a copy of a head-major layer) is never
    needed."""
    windows = any(config.layer_window(i) is not None for i in range(config.num_layers))
    return (
        not windows and config.attn_logit_softcap is None
        and _extend_kernel_builds(dtype, device, config.head_dim)
    )  # fmt: skip


def extend_kernel_fits(pool: KVPool) -> bool:
    """Whether `paged_extend` can attend prefills over this pool: a bfloat16 pool on the
    CPU, and the kernel built here for its head_dim."""
    return _extend_kernel_builds(pool.shape.dtype, pool.device, pool.shape.head_dim)


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
        native: bool = True,
    ) -> None:
        self.pool = pool
        self.workspace = workspace_for(pool)
        self.metadata = PagedAttentionMetadata.build(
            seq_slots, prefix_lens, extend_lens, out_cache_loc,
            pool.shape.num_kv_heads, pool.device, check, cascade, native,
            native and extend_kernel_fits(pool),
        )  # fmt: skip
        self.windows = WindowPlans(self.metadata)  # for window / soft-capped layers

    @property
    def extend_lens(self) -> list[int]:
        return list(self.metadata.extend_lens)

    @property
    def positions(self) -> torch.Tensor:
        """[T] int64 positions of the new tokens (what the model's `positions` should be)."""
        return self.metadata.positions

    def attend(
        self,
        layer_id: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        scale: float,
        window: int | None = None,
        softcap: float | None = None,
    ) -> torch.Tensor:
        meta = self.metadata
        self.pool.set_kv(layer_id, meta.out_cache_loc, k, v)
        k_buf, v_buf = self.pool.get_kv(layer_id)
        if window is not None and softcap is None and meta.decode is not None:
            # a decode batch: each sequence's last `window` keys, read in place
            index = self.windows.decode_index(window)
            out, _ = kernels().paged_decode(q, k_buf, v_buf, *index, scale)
            return out
        if window is not None or softcap is not None:  # see attention.window
            groups = self.windows.groups(window)
            return attend_window_groups(groups, q, k_buf, v_buf, scale, softcap)
        if meta.extend:  # keys read in place; [T, H, D]
            return kernels().paged_extend(
                q, k_buf, v_buf, meta.qo_indptr, meta.kv_indptr, meta.kv_indices, scale, True
            )[0]
        if meta.decode is not None:  # keys read in place; [T, H, D] and [T, H] LSE
            out, lse = kernels().paged_decode(q, k_buf, v_buf, *meta.decode, scale)
            if meta.shared_runs is not None:  # each group's queries over its run, in place
                rows, qo, kv, runs = meta.shared_runs
                o2, lse2 = kernels().paged_extend(
                    q.index_select(0, rows), k_buf, v_buf, qo, kv, runs, scale, False
                )
                merge_partials(out, lse, rows, o2, lse2)
                return out
            if not meta.shared_batches:
                return out
            return self._merge_shared(out, lse, q, *self.pool.flat_rows(layer_id), scale)
        k_rows, v_rows = self.pool.flat_rows(layer_id)  # [slots * Hkv, D]
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
        return self._merge_shared(out, lse, q, k_rows, v_rows, scale)

    def _merge_shared(
        self,
        out: torch.Tensor,
        lse: torch.Tensor | None,
        q: torch.Tensor,
        k_rows: torch.Tensor,
        v_rows: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        """Merge the shared runs' attention into `out` ([T, H, D], own keys done); returns it."""
        for sb in self.metadata.shared_batches:
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
