"""Sliding-window and soft-capped attention through PagedContext against an explicit softmax.

Sequences with cached prefixes longer than the window, mixed prefill/decode
batches, and decode batches (the native kernel over the last W slots when it
is built) all keep the full K/V in the pool and mask to the last W positions.
"""

from __future__ import annotations

import pytest
import torch
from unit.test_paged_attention import D, run_paged, scenario

from radixlm.attention.paged import PagedContext
from radixlm.native import kernels


def reference(q, k, v, prefix_len, scale, window, softcap):
    """q [n, H, D] over k, v [p + n, Hkv, D]; key l visible to query p + j iff
    0 <= p + j - l (< window); scores soft-capped when `softcap`."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1).double()
    v = v.repeat_interleave(groups, dim=1).double()
    scores = torch.einsum("qhd,khd->hqk", q.double(), k) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    diff = (torch.arange(q.shape[0]) + prefix_len).unsqueeze(1) - torch.arange(k.shape[0])
    allowed = diff >= 0
    if window is not None:
        allowed &= diff < window
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).float()


CASES = [
    ([0], [20]),  # prefill longer than the window
    ([13], [6]),  # extend over a cached prefix longer than the window
    ([2, 30, 0, 9], [7, 1, 12, 1]),  # a mixed batch
    ([25, 3, 17], [1, 1, 1]),  # decode
]


@pytest.mark.parametrize(("prefix_lens", "extend_lens"), CASES)
@pytest.mark.parametrize(("window", "softcap"), [(5, None), (5, 2.0), (None, 2.0), (1, None)])
@pytest.mark.parametrize("native", [False, True])
def test_window_and_softcap_match_explicit_softmax(
    prefix_lens, extend_lens, window, softcap, native
):
    if native and kernels() is None:
        pytest.skip("the native kernels are not built here")
    pool, seqs = scenario(prefix_lens, extend_lens, num_heads=4, num_kv_heads=2, seed=3)
    scale = D**-0.5
    out_loc = torch.cat([s[p:] for (s, *_), p in zip(seqs, prefix_lens, strict=True)])
    ctx = PagedContext(pool, [s for s, *_ in seqs], prefix_lens, extend_lens, out_loc,
                       check=True, native=native)  # fmt: skip
    q = torch.cat([q for *_, q in seqs])
    k = torch.cat([k[p:] for (_, k, _, _), p in zip(seqs, prefix_lens, strict=True)])
    v = torch.cat([v[p:] for (_, _, v, _), p in zip(seqs, prefix_lens, strict=True)])
    out = ctx.attend(0, q, k, v, scale, window, softcap)
    at = 0
    for (_, k, v, q), p, e in zip(seqs, prefix_lens, extend_lens, strict=True):
        expected = reference(q, k, v, p, scale, window, softcap)
        assert (out[at : at + e] - expected).abs().max().item() < 1e-5
        at += e
    # the plain path (no window, no cap) still answers full causal attention
    _, plain = run_paged(pool, seqs, prefix_lens, extend_lens, scale, native)
    first = reference(seqs[0][3], seqs[0][1], seqs[0][2], prefix_lens[0], scale, None, None)
    assert (plain[: extend_lens[0]] - first).abs().max().item() < 1e-5


def test_soft_capped_scores_in_query_chunks_equal_one_pass(monkeypatch):
    """Long prefills compute capped scores a few query rows at a time: the same result."""
    from radixlm.attention import window

    prefix_lens, extend_lens = [9, 0], [23, 17]
    pool, seqs = scenario(prefix_lens, extend_lens, num_heads=4, num_kv_heads=2, seed=5)
    out_loc = torch.cat([s[p:] for (s, *_), p in zip(seqs, prefix_lens, strict=True)])
    q = torch.cat([q for *_, q in seqs])
    k = torch.cat([k[p:] for (_, k, _, _), p in zip(seqs, prefix_lens, strict=True)])
    v = torch.cat([v[p:] for (_, _, v, _), p in zip(seqs, prefix_lens, strict=True)])
    outs = []
    for elements in (1 << 24, 4 * 32 * 3):  # one pass; then 3 query rows per chunk
        monkeypatch.setattr(window, "SCORE_ELEMENTS", elements)
        ctx = PagedContext(pool, [s for s, *_ in seqs], prefix_lens, extend_lens, out_loc)
        outs.append(ctx.attend(0, q, k, v, D**-0.5, 6, 2.0))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-6)
