"""Shared-prefix ("cascade") attention for the paged backend.

The radix cache hands every request that matches a cached prefix the *same*
pool slots for it, so a decode batch often holds groups of sequences whose
slot lists begin with one identical run. Gathering that run once per group
instead of once per member cuts the gather traffic (the cost of paged decode
in plain torch) by up to the group size.

For a group sharing its first C slots, attention of a member's query splits
exactly over two disjoint key sets:

- the shared keys [0, C): gathered once as `[Hkv, C, D]`, attended by all
  the group's queries together with no mask (groups with similar C are
  batched into one padded call, `SharedBatch`). Valid because C is capped at
  every member's cached prefix length, and a new token at position
  p + j >= p >= C sees every earlier key;
- the member's own keys [C, seq_len): gathered per member, padded and masked
  as in the plain path (it is a sequence with prefix length p - C).

Each part returns its output and the log-sum-exp (LSE) of its scores per
(query, head); `merge_partials` combines them exactly. SDPA does not return
the LSE, so both parts use `attention_lse` (matmuls + an explicit softmax).

When the shared path is used (`find_shared_prefixes`): a set of >= 2
sequences whose cached prefixes begin with the same C >= SHARED_MIN_TOKENS
slots, and whose de-duplicated gather (members - 1) * C is at least
SHARED_MIN_SAVED tokens, so that the saved copy outweighs the few extra
kernel calls of a shared group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from radixlm.kvcache.pool import PAD_SLOT

# A shared run must be at least this many tokens long, ...
SHARED_MIN_TOKENS = 64
# ... and (members - 1) * shared_len (tokens gathered once instead of per member) this large.
SHARED_MIN_SAVED = 512
# Shared runs batched into one padded call may gather this factor more K/V rows than their
# total, plus this many (padding costs copy; each call costs a dozen small ops).
SHARED_PAD_FACTOR = 1.25
SHARED_PAD_SLACK = 256
# attention_lse processes queries in chunks whose score block stays under this many elements.
SCORE_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class SharedPrefix:
    """Sequences `members` (ascending flat-batch indices) whose first `shared_len` slots agree."""

    members: tuple[int, ...]
    shared_len: int


@dataclass(frozen=True)
class SharedBatch:
    """The shared runs of several groups, attended in one padded call; tensors on the pool device.

    Row s of the batch is group s: its queries are all its members' new tokens,
    its keys its shared run, padded to `kv_len` with the pool's reserved slot.
    q_index:   [batch * q_len] flat-batch rows of the queries (padding repeats a real row).
    kv_index:  [batch * num_kv_heads * kv_len] rows of a layer's K (or V) viewed as
               [num_slots * num_kv_heads, head_dim]; group-major, then head, then token.
    hidden:    [batch, 1, 1, 1, kv_len] bool, True on padded keys; None when no padding.
    out_index: [n] rows of the padded output [batch * q_len] that are real tokens,
    t_index:   [n] the flat-batch rows they go to.
    """

    batch: int
    q_len: int
    kv_len: int
    q_index: torch.Tensor
    kv_index: torch.Tensor
    hidden: torch.Tensor | None
    out_index: torch.Tensor
    t_index: torch.Tensor


def find_shared_prefixes(
    slots: Sequence[torch.Tensor], prefix: Sequence[int]
) -> list[SharedPrefix]:
    """Groups of sequences that share a leading run of cached slots worth gathering once.

    Candidates (cached prefix >= SHARED_MIN_TOKENS) are bucketed by their slots
    at positions 0 and SHARED_MIN_TOKENS - 1; within a bucket, each member's
    common run with the member of longest prefix is measured on the slot
    tensors, and `_best_subset` keeps the members that maximise the saved
    gather. Members left over are tried again against a new reference (after
    two references in a row that find nothing, the bucket is given up).
    Returns the groups, members ascending; every shared_len is at most
    each member's prefix length, so each member keeps >= 1 own key (its new token).
    """
    lo = SHARED_MIN_TOKENS
    cand = [i for i, p in enumerate(prefix) if p >= lo]
    if len(cand) < 2:
        return []
    keys = torch.stack([slots[i][[0, lo - 1]] for i in cand]).tolist()  # [n, 2]
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, key in zip(cand, keys, strict=True):
        buckets.setdefault((key[0], key[1]), []).append(i)
    found = []
    for pending in buckets.values():
        misses = 0  # a miss drops the reference (it may be an outlier); two end the bucket
        while len(pending) >= 2 and misses < 2:
            ref = max(pending, key=lambda i: prefix[i])
            runs = _common_runs(slots, prefix, pending, ref)
            chosen, shared_len = _best_subset(pending, runs)
            if not chosen:
                pending = [i for i in pending if i != ref]
                misses += 1
                continue
            misses = 0
            found.append(SharedPrefix(tuple(sorted(chosen)), shared_len))
            pending = [i for i in pending if i not in chosen]
    return found


def _common_runs(
    slots: Sequence[torch.Tensor], prefix: Sequence[int], members: list[int], ref: int
) -> list[int]:
    """Length of the run of cached slots each member shares with `ref` (ref's own: its prefix)."""
    width = prefix[ref]
    rows = [slots[i][: min(prefix[i], width)] for i in members]
    padded = pad_sequence(rows, batch_first=True, padding_value=-1)  # [k, w], w <= width
    w = padded.shape[1]
    # -1 padding never equals a slot: a shorter row mismatches where it ends.
    neq = padded != slots[ref][:w].unsqueeze(0)  # [k, w]
    first = torch.where(neq.any(1), neq.to(torch.uint8).argmax(1), w)  # first mismatch
    return first.tolist()


def _best_subset(members: list[int], runs: list[int]) -> tuple[list[int], int]:
    """Members sharing the run that saves most gather, and its length; ([], 0) if none pays.

    Taking the n longest runs shares min(run) = runs_sorted[n - 1] tokens and saves
    (n - 1) times that; n >= 2, the run >= SHARED_MIN_TOKENS, the saving >= SHARED_MIN_SAVED.
    """
    order = sorted(range(len(members)), key=lambda j: -runs[j])
    best_saved, best_n = 0, 0
    for n in range(2, len(order) + 1):
        run = runs[order[n - 1]]
        saved = (n - 1) * run
        if run >= SHARED_MIN_TOKENS and saved >= SHARED_MIN_SAVED and saved > best_saved:
            best_saved, best_n = saved, n
    if not best_n:
        return [], 0
    return [members[j] for j in order[:best_n]], runs[order[best_n - 1]]


def split_shared(
    slots: Sequence[torch.Tensor], prefix: Sequence[int], found: Sequence[SharedPrefix]
) -> tuple[list[torch.Tensor], tuple[int, ...], list[int], list[int]]:
    """What is left to attend per sequence once the shared runs are taken out.

    A member of a group sharing C slots becomes a sequence with slots[C:] and
    prefix p - C (C <= p, so it keeps >= 1 key: its first new token's own).
    Returns (own slots, own prefix lengths, indices of sequences in no group,
    indices of shared-group members), index lists ascending.
    """
    offset = [0] * len(slots)
    for g in found:
        for i in g.members:
            offset[i] = g.shared_len
    own = [s[o:] for s, o in zip(slots, offset, strict=True)]
    own_prefix = tuple(p - o for p, o in zip(prefix, offset, strict=True))
    shared = sorted(i for g in found for i in g.members)
    in_shared = set(shared)
    return own, own_prefix, [i for i in range(len(slots)) if i not in in_shared], shared


def plan_shared_batches(shared_lens: Sequence[int]) -> list[list[int]]:
    """Partition shared runs (by length) into padded calls; returns lists of indices.

    Longest first; a batch grows while count * longest <= SHARED_PAD_FACTOR * total
    + SHARED_PAD_SLACK, so padding adds little gather traffic.
    """
    order = sorted(range(len(shared_lens)), key=lambda i: (-shared_lens[i], i))
    batches: list[list[int]] = []
    longest = total = 0
    for i in order:
        n = shared_lens[i]
        if batches:
            count = len(batches[-1]) + 1
            if count * longest <= SHARED_PAD_FACTOR * (total + n) + SHARED_PAD_SLACK:
                batches[-1].append(i)
                total += n
                continue
        batches.append([i])
        longest = total = n
    return [sorted(b) for b in batches]


def build_shared_batch(
    groups: Sequence[SharedPrefix],
    slots: Sequence[torch.Tensor],
    starts: Sequence[int],
    extend: Sequence[int],
    num_kv_heads: int,
) -> SharedBatch:
    """Index tensors of one batch of shared groups (see SharedBatch for the shapes).

    `starts[i]`: flat-batch row of sequence i's first new token.
    """
    dev = dict(device=slots[0].device, dtype=torch.int64)
    rows = [[r for i in g.members for r in range(starts[i], starts[i] + extend[i])] for g in groups]
    q_len = max(len(r) for r in rows)
    q_index = torch.tensor([r + [r[-1]] * (q_len - len(r)) for r in rows], **dev)  # [S, Nmax]
    runs = [slots[g.members[0]][: g.shared_len] for g in groups]
    padded = pad_sequence(runs, batch_first=True, padding_value=PAD_SLOT)  # [S, Cmax]
    kv_len = padded.shape[1]
    heads = torch.arange(num_kv_heads, **dev).view(1, num_kv_heads, 1)
    kv_index = (padded.unsqueeze(1) * num_kv_heads + heads).reshape(-1)
    hidden = None
    if any(g.shared_len != kv_len for g in groups):
        lens = torch.tensor([g.shared_len for g in groups], **dev)
        hidden = torch.arange(kv_len, **dev).unsqueeze(0) >= lens.unsqueeze(1)  # [S, Cmax]
        hidden = hidden.view(len(groups), 1, 1, 1, kv_len)
    real = [j < len(r) for r in rows for j in range(q_len)]
    return SharedBatch(
        batch=len(groups),
        q_len=q_len,
        kv_len=kv_len,
        q_index=q_index.reshape(-1),
        kv_index=kv_index,
        hidden=hidden,
        out_index=torch.nonzero(torch.tensor(real, device=dev["device"])).squeeze(1),
        t_index=torch.tensor([t for r in rows for t in r], **dev),
    )


def padded_attention_lse(
    q: torch.Tensor,
    q_index: torch.Tensor,
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    shape: tuple[int, int, int],
    hidden: torch.Tensor | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of a padded block of queries over a gathered block of keys, with its LSE.

    q: [T, H, D] flat batch; q_index: [b * q_len] its rows in the block; k_buf, v_buf:
    [b * Hkv * kv_len, D] gathered rows (block-major, head, token); shape: (b, q_len, kv_len);
    hidden: see `attention_lse`. Returns ([b * q_len, H, D], [b * q_len, H] float32).
    """
    b, q_len, kv_len = shape
    h, d = q.shape[1], q.shape[2]
    hkv = k_buf.shape[0] // (b * kv_len)
    qg = q.index_select(0, q_index).view(b, q_len, hkv, h // hkv, d)
    qg = qg.permute(0, 2, 1, 3, 4)  # [b, Hkv, q_len, G, D]
    kg = k_buf.view(b, hkv, kv_len, d)  # [b, Hkv, kv_len, D]
    vg = v_buf.view(b, hkv, kv_len, d)
    o, lse = attention_lse(qg, kg, vg, scale, hidden)  # [b, Hkv, q_len, G, (D)]
    o = o.permute(0, 2, 1, 3, 4).reshape(b * q_len, h, d)
    return o, lse.permute(0, 2, 1, 3).reshape(b * q_len, h)


def attention_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    hidden: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention that also returns the log-sum-exp of the scaled scores.

    q: [B, Hkv, Q, G, D] (G query heads per KV head); k, v: [B, Hkv, L, D];
    hidden: None or bool broadcastable to [B, 1, Q, 1, L], True = key hidden from
    the query. Every query must see at least one key.
    Returns o [B, Hkv, Q, G, D] in q's dtype and lse [B, Hkv, Q, G] float32.
    Queries are processed in chunks so that a score block has at most
    SCORE_CHUNK_ELEMENTS elements.
    """
    b, hkv, nq, g, _ = q.shape
    step = max(1, SCORE_CHUNK_ELEMENTS // max(1, b * hkv * g * k.shape[2]))
    if step >= nq:
        return _attention_lse_chunk(q, k, v, scale, hidden)
    # A mask shared by every query ([.., 1, 1, L]) applies whole to each chunk; only a
    # per-query one ([.., Q, 1, L]) is sliced with its queries.
    per_query = hidden is not None and hidden.shape[2] != 1
    outs, lses = [], []
    for s in range(0, nq, step):
        part = hidden[:, :, s : s + step] if per_query else hidden
        o, lse = _attention_lse_chunk(q[:, :, s : s + step], k, v, scale, part)
        outs.append(o)
        lses.append(lse)
    return torch.cat(outs, 2), torch.cat(lses, 2)


def _attention_lse_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    hidden: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`attention_lse` on one block of queries (same shapes and results)."""
    b, hkv, nq, g, d = q.shape
    length = k.shape[2]
    q2 = (q * scale).reshape(b, hkv, nq * g, d).to(k.dtype)  # [B, Hkv, Q*G, D]
    scores = torch.matmul(q2, k.transpose(-1, -2)).float()  # [B, Hkv, Q*G, L]
    scores = scores.view(b, hkv, nq, g, length)
    if hidden is not None:
        scores.masked_fill_(hidden, float("-inf"))
    row_max = scores.amax(-1, keepdim=True)  # [B, Hkv, Q, G, 1], finite: >= 1 key visible
    scores.sub_(row_max).exp_()
    total = scores.sum(-1, keepdim=True)  # [B, Hkv, Q, G, 1], >= 1
    probs = scores.view(b, hkv, nq * g, length).to(v.dtype)
    o = torch.matmul(probs, v).view(b, hkv, nq, g, d).float().div_(total)
    lse = (row_max + total.log()).squeeze(-1)
    return o.to(q.dtype), lse


def merge_partials(
    out: torch.Tensor,
    lse: torch.Tensor,
    rows: torch.Tensor,
    o2: torch.Tensor,
    lse2: torch.Tensor,
) -> None:
    """Combine, in place, the partial attention in `out`/`lse` at `rows` with `o2`/`lse2`.

    out: [T, H, D]; lse: [T, H] float32; rows: [n]; o2: [n, H, D]; lse2: [n, H] float32,
    both parts over disjoint key sets. out[rows] becomes the attention over their union:
    (o1 * exp(lse1 - m) + o2 * exp(lse2 - m)) / (exp(lse1 - m) + exp(lse2 - m)), m = max.
    `lse` is not updated (it is not needed after the merge).
    """
    o1 = out.index_select(0, rows).float()  # [n, H, D]
    lse1 = lse.index_select(0, rows)  # [n, H]
    m = torch.maximum(lse1, lse2)
    w1 = (lse1 - m).exp_()
    w2 = (lse2 - m).exp_()
    denom = w1 + w2
    merged = o1.mul_((w1 / denom).unsqueeze(-1)).add_(o2.float() * (w2 / denom).unsqueeze(-1))
    out.index_copy_(0, rows, merged.to(out.dtype))
