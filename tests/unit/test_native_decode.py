"""The compiled paged decode kernel against an explicit softmax(q k^T) v, and its fallback.

Keys sit at scattered pool slots; every case checks the output and the
log-sum-exp the cascade merge relies on. Skipped with the reason when the
kernel cannot be built here (it needs a C++ compiler; see `native`).
"""

from __future__ import annotations

import pytest
import torch

from radixlm import native

KERNELS = native.kernels()
pytestmark = pytest.mark.skipif(
    KERNELS is None, reason="native kernels did not build (needs g++ and ninja)"
)


def reference(q, k_cache, v_cache, indptr, indices, scale):
    """(out [B, H, D], lse [B, H]) in float64, one sequence at a time."""
    outs, lses = [], []
    g = q.shape[1] // k_cache.shape[1]
    for b in range(q.shape[0]):
        rows = indices[indptr[b] : indptr[b + 1]]
        k = k_cache[rows].double().repeat_interleave(g, 1)  # [L, H, D]
        v = v_cache[rows].double().repeat_interleave(g, 1)
        s = torch.einsum("hd,lhd->hl", q[b].double(), k) * scale
        lses.append(torch.logsumexp(s, -1))
        outs.append(torch.einsum("hl,lhd->hd", s.softmax(-1), v))
    return torch.stack(outs), torch.stack(lses)


@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(9, 3, 64), (4, 4, 16), (8, 2, 128),
                                                        (6, 1, 24), (16, 2, 64)])  # fmt: skip
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seed", range(3))
def test_matches_reference(heads, kv_heads, dim, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, 700, (5,), generator=gen)
    lens[0] = 1  # a sequence with only its new token
    slots = 4000
    k_cache = torch.randn(slots, kv_heads, dim, generator=gen).to(dtype)
    v_cache = torch.randn(slots, kv_heads, dim, generator=gen).to(dtype)
    q = torch.randn(len(lens), heads, dim, generator=gen).to(dtype)
    indices = torch.randperm(slots, generator=gen)[: int(lens.sum())]
    indptr = torch.nn.functional.pad(torch.cumsum(lens, 0), (1, 0))
    scale = dim**-0.5
    out, lse = KERNELS.paged_decode(q, k_cache, v_cache, indptr, indices, scale)
    ref_out, ref_lse = reference(q, k_cache, v_cache, indptr, indices, scale)
    assert out.dtype == dtype and out.shape == q.shape and lse.dtype == torch.float32
    # float32: accumulation order only; bfloat16: one rounding of the output.
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert (out.double() - ref_out).abs().max().item() <= tol
    assert (lse.double() - ref_lse).abs().max().item() <= 1e-4


def test_rejects_mismatched_inputs():
    q = torch.randn(2, 4, 16)
    cache = torch.randn(10, 2, 16)
    indices = torch.arange(4)
    with pytest.raises(RuntimeError, match="B \\+ 1"):
        KERNELS.paged_decode(q, cache, cache, torch.tensor([0, 4]), indices, 1.0)
    with pytest.raises(RuntimeError, match="one dtype"):
        KERNELS.paged_decode(q.bfloat16(), cache, cache, torch.tensor([0, 2, 4]), indices, 1.0)


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("RADIXLM_NATIVE", "0")
    native.kernels.cache_clear()
    try:
        assert native.kernels() is None
    finally:
        monkeypatch.delenv("RADIXLM_NATIVE")
        native.kernels.cache_clear()
    assert native.kernels() is not None
