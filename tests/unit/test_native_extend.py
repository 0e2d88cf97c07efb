"""The compiled prefill/extend attention kernel against an explicit causal softmax(q k^T) v.

Keys sit at scattered pool slots; a sequence's queries are its last tokens, so
query j sees the cached prefix and new keys up to its own. Every case checks the
output and the log-sum-exp. Skipped with the reason when the kernel cannot be
built here (a C++ compiler and AVX512-BF16 are needed; see `native`).
"""

from __future__ import annotations

import pytest
import torch

from radixlm import native
from radixlm.attention.paged import PagedContext, extend_kernel_fits
from radixlm.kvcache.pool import KVPool, PoolShape

KERNELS = native.kernels()
pytestmark = pytest.mark.skipif(
    KERNELS is None or not KERNELS.paged_extend_supported(64),
    reason="paged_extend needs the native kernels (g++, ninja) and a CPU with AVX512-BF16",
)


def reference(q, k_cache, v_cache, qo, kv, indices, scale, causal=True):
    """(out [T, H, D], lse [T, H]) in float64, one sequence at a time."""
    outs, lses = [], []
    g = q.shape[1] // k_cache.shape[1]
    for b in range(len(qo) - 1):
        rows = indices[kv[b] : kv[b + 1]]
        k = k_cache[rows].double().repeat_interleave(g, 1)  # [L, H, D]
        v = v_cache[rows].double().repeat_interleave(g, 1)
        qb = q[qo[b] : qo[b + 1]].double()  # [E, H, D]
        e, n = qb.shape[0], k.shape[0]
        s = torch.einsum("ehd,lhd->hel", qb, k) * scale
        if causal:
            hidden = torch.arange(n).view(1, n) > (n - e + torch.arange(e)).view(e, 1)  # [E, L]
            s = s.masked_fill(hidden, float("-inf"))
        lses.append(torch.logsumexp(s, -1).T)
        outs.append(torch.einsum("hel,lhd->ehd", s.softmax(-1), v))
    return torch.cat(outs), torch.cat(lses)


def make_batch(seqs, heads, kv_heads, dim, seed, slots=6000):
    """Random bfloat16 q, pool K/V and scattered slots for (prefix, new) pairs."""
    gen = torch.Generator().manual_seed(seed)
    k_cache = torch.randn(slots, kv_heads, dim, generator=gen).bfloat16()
    v_cache = torch.randn(slots, kv_heads, dim, generator=gen).bfloat16()
    q = (2 * torch.randn(sum(e for _, e in seqs), heads, dim, generator=gen)).bfloat16()
    indices = torch.randperm(slots, generator=gen)[: sum(p + e for p, e in seqs)]
    qo = torch.tensor([0] + [e for _, e in seqs]).cumsum(0)
    kv = torch.tensor([0] + [p + e for p, e in seqs]).cumsum(0)
    return q, k_cache, v_cache, qo, kv, indices


# (64, 1, 64): more query heads per kv head than one item holds
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(9, 3, 64), (4, 4, 64), (8, 2, 128),
                                                        (32, 2, 64), (4, 1, 128),
                                                        (64, 1, 64)])  # fmt: skip
@pytest.mark.parametrize(
    "seqs",
    [
        [(0, 300)],  # a fresh prompt: keys past the first block, a partial last block
        [(0, 1), (5, 1), (0, 2), (31, 33)],  # single rows, block edges
        [(700, 40), (0, 17), (64, 64), (1, 95)],  # cached prefixes beside fresh prompts
    ],
)
def test_matches_reference(heads, kv_heads, dim, seqs):
    q, k_cache, v_cache, qo, kv, indices = make_batch(seqs, heads, kv_heads, dim, seed=len(seqs))
    scale = dim**-0.5
    out, lse = KERNELS.paged_extend(q, k_cache, v_cache, qo, kv, indices, scale, True)
    ref_out, ref_lse = reference(q, k_cache, v_cache, qo, kv, indices, scale)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape and lse.shape == q.shape[:2]
    # The output is rounded to bfloat16 once and the weights once (relative 2^-9 each),
    # on values of |v| <~ 4; a wrong mask or lane order is off by O(0.1) or more.
    assert (out.double() - ref_out).abs().max().item() <= 2e-2
    # Scores are exact products summed in float32.
    assert (lse.double() - ref_lse).abs().max().item() <= 1e-3


@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(9, 3, 64), (8, 2, 128)])
def test_without_causal_mask_every_query_sees_every_key(heads, kv_heads, dim):
    """More queries than keys is allowed here: several sequences' tokens over a shared run."""
    seqs = [(0, 100), (1, 8), (30, 3)]  # (keys - queries, queries): the last has 3 + 30 keys
    q, k_cache, v_cache, qo, kv, indices = make_batch(seqs, heads, kv_heads, dim, seed=7)
    kv = torch.tensor([0, 40, 41, 74])  # 40 keys for 100 queries, 1 for 8, 33 for 3
    out, lse = KERNELS.paged_extend(q, k_cache, v_cache, qo, kv, indices, dim**-0.5, False)
    ref_out, ref_lse = reference(q, k_cache, v_cache, qo, kv, indices, dim**-0.5, causal=False)
    assert (out.double() - ref_out).abs().max().item() <= 2e-2
    assert (lse.double() - ref_lse).abs().max().item() <= 1e-3


def test_rejects_bad_inputs():
    q, k_cache, v_cache, qo, kv, indices = make_batch([(3, 4)], 4, 2, 64, seed=0)
    with pytest.raises(RuntimeError, match="bfloat16"):
        KERNELS.paged_extend(q.float(), k_cache, v_cache, qo, kv, indices, 1.0, True)
    with pytest.raises(RuntimeError, match="at least as many keys"):
        KERNELS.paged_extend(q, k_cache, v_cache, qo, torch.tensor([0, 3]), indices, 1.0, True)
    with pytest.raises(RuntimeError, match="head_dim"):
        k32, v32 = k_cache[..., :32].contiguous(), v_cache[..., :32].contiguous()
        KERNELS.paged_extend(q[..., :32], k32, v32, qo, kv, indices, 1.0, True)


def test_paged_context_uses_it_and_agrees_with_torch():
    """A bfloat16 CPU pool attends a prefill batch with the kernel; the padded torch path
    on the same inputs gives the same answer within bfloat16 rounding."""
    shape = PoolShape(num_layers=1, num_kv_heads=3, head_dim=64, dtype=torch.bfloat16)
    pool = KVPool(shape, 4096)
    assert extend_kernel_fits(pool)
    seqs = [(0, 200), (128, 40), (128, 1)]  # the last two share a cached run of 128
    gen = torch.Generator().manual_seed(1)
    slots = torch.randperm(4000, generator=gen)[:600] + 1
    shared = slots[:128]
    seq_slots = [slots[128:328], torch.cat([shared, slots[328:368]]),
                 torch.cat([shared, slots[368:369]])]  # fmt: skip
    k_old = torch.randn(128, 3, 64, generator=gen).bfloat16()
    pool.set_kv(0, shared, k_old, k_old.flip(0))
    new = torch.cat([s[p:] for s, (p, _) in zip(seq_slots, seqs, strict=True)])
    t = new.numel()
    q = torch.randn(t, 9, 64, generator=gen).bfloat16()
    k = torch.randn(t, 3, 64, generator=gen).bfloat16()
    v = torch.randn(t, 3, 64, generator=gen).bfloat16()
    outs = []
    for native_extend in (True, False):
        ctx = PagedContext(pool, seq_slots, [p for p, _ in seqs], [e for _, e in seqs], new)
        if not native_extend:  # the same batch through the padded torch groups and cascade
            ctx.metadata = type(ctx.metadata).build(
                seq_slots, [p for p, _ in seqs], [e for _, e in seqs], new, 3, pool.device
            )
        assert ctx.metadata.extend is native_extend
        outs.append(ctx.attend(0, q, k, v, 0.125))
    assert (outs[0].float() - outs[1].float()).abs().max().item() <= 2e-2


def test_decode_shared_runs_use_it_and_agree_with_torch():
    """A decode batch whose members share a cached run attends the run with the kernel
    (queries of all members at once) and merges it with each member's own keys."""
    shape = PoolShape(num_layers=1, num_kv_heads=3, head_dim=64, dtype=torch.bfloat16)
    pool = KVPool(shape, 4096)
    gen = torch.Generator().manual_seed(2)
    slots = torch.randperm(4000, generator=gen)[:1000] + 1
    shared = slots[:300]
    own = [slots[300 + 50 * i : 300 + 50 * i + 10 * i + 1] for i in range(4)]  # 1..31 own keys
    seq_slots = [torch.cat([shared, o]) for o in own] + [slots[600:700]]  # the last unshared
    cached = torch.cat([s[:-1] for s in seq_slots])
    pool.set_kv(0, cached, *torch.randn(2, cached.numel(), 3, 64, generator=gen).bfloat16())
    prefix = [s.numel() - 1 for s in seq_slots]
    new = torch.stack([s[-1] for s in seq_slots])
    q, k, v = torch.randn(3, len(seq_slots), 9, 64, generator=gen).bfloat16().unbind(0)
    q, k, v = q.contiguous(), k[:, :3].contiguous(), v[:, :3].contiguous()
    ctx = PagedContext(pool, seq_slots, prefix, [1] * len(seq_slots), new)
    assert ctx.metadata.shared_runs is not None and not ctx.metadata.shared_batches
    fast = ctx.attend(0, q, k, v, 0.125)
    ref = PagedContext(pool, seq_slots, prefix, [1] * len(seq_slots), new)
    ref.metadata = type(ref.metadata).build(seq_slots, prefix, [1] * len(seq_slots), new, 3,
                                            pool.device)  # fmt: skip
    assert ref.metadata.shared_runs is None and ref.metadata.shared_batches
    assert (fast.float() - ref.attend(0, q, k, v, 0.125).float()).abs().max().item() <= 2e-2


def head_major(cache: torch.Tensor) -> torch.Tensor:
    """The same [S, Hkv, D] values stored [Hkv, S, D] (a head-major KVPool layer's view)."""
    return cache.transpose(0, 1).contiguous().transpose(0, 1)


@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(9, 3, 64), (8, 2, 128)])
@pytest.mark.parametrize("causal", [True, False])
def test_head_major_caches_give_the_same_bits(heads, kv_heads, dim, causal):
    """Only the addresses differ between the layouts, so the outputs are identical."""
    q, k_cache, v_cache, qo, kv, indices = make_batch([(700, 40), (0, 17)], heads, kv_heads, dim, 3)
    kh, vh = head_major(k_cache), head_major(v_cache)
    assert not kh.is_contiguous() and kh.stride(0) == dim
    a = KERNELS.paged_extend(q, k_cache, v_cache, qo, kv, indices, dim**-0.5, causal)
    b = KERNELS.paged_extend(q, kh, vh, qo, kv, indices, dim**-0.5, causal)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    d = KERNELS.paged_decode(q[: len(qo) - 1], kh, vh, kv, indices, dim**-0.5)
    c = KERNELS.paged_decode(q[: len(qo) - 1], k_cache, v_cache, kv, indices, dim**-0.5)
    assert torch.equal(c[0], d[0]) and torch.equal(c[1], d[1])
    with pytest.raises(RuntimeError, match="one layout"):
        KERNELS.paged_extend(q, kh, v_cache, qo, kv, indices, dim**-0.5, causal)
