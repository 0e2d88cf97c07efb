"""The tiny models through shared-prefix (cascade) paged attention.

Groups of requests reuse the pool slots of a cached system prompt (as the
radix cache hands them out), extend their questions over it in one batch and
then decode token by token together with an unrelated request. Every step's
logits must equal one dense forward over the whole sequence within 1e-4. The
sharing thresholds are lowered so that the tiny prompts take the shared path.
"""

from __future__ import annotations

import pytest
import torch
from helpers.reference import full_logits, tokens

from radixlm.attention import cascade
from radixlm.attention.paged import PagedContext
from radixlm.config import LoadConfig
from radixlm.kvcache.pool import KVPool
from radixlm.loader import LoadedModel, load_model

TOL = 1e-4


@pytest.fixture(scope="module", params=["llama3", "qwen2"])
def loaded(request, tiny_model_factory) -> LoadedModel:
    path = tiny_model_factory(request.param)
    return load_model(LoadConfig(model=str(path), dtype="float32", device="cpu"), progress=False)


def paged_forward(loaded, pool, seq_slots, prefix_lens, new_ids):
    """One forward of each sequence's new tokens; returns (logits [T, vocab], context)."""
    extend = [len(x) for x in new_ids]
    out_loc = torch.cat([s[p:] for s, p in zip(seq_slots, prefix_lens, strict=True)])
    ctx = PagedContext(pool, seq_slots, prefix_lens, extend, out_loc, check=True)
    ids = torch.tensor([t for x in new_ids for t in x])
    return loaded.model(ids, ctx.positions, ctx), ctx


def test_shared_prefix_extend_and_decode_match_full_recompute(loaded, monkeypatch):
    monkeypatch.setattr(cascade, "SHARED_MIN_TOKENS", 8)
    monkeypatch.setattr(cascade, "SHARED_MIN_SAVED", 8)
    vocab = loaded.config.vocab_size
    pool = KVPool.for_model(loaded.config, loaded.dtype, loaded.device, max_total_tokens=512)
    order = torch.randperm(512, generator=torch.Generator().manual_seed(0))
    pool.free(pool.alloc(512)[order])  # scattered slots
    systems = [tokens(40, 1, vocab), tokens(25, 2, vocab)]
    sys_slots = [pool.alloc(len(s)) for s in systems]
    paged_forward(loaded, pool, sys_slots, [0, 0], systems)  # the cached system prompts
    # Three requests per system prompt with questions of different lengths, plus one unrelated.
    seqs = [systems[g] + tokens(3 + 4 * j, 10 * g + j, vocab) for g in (0, 1) for j in range(3)]
    seqs.append(tokens(30, 99, vocab))
    slots = [torch.cat([sys_slots[i // 3], pool.alloc(len(s) - len(systems[i // 3]))])
             for i, s in enumerate(seqs[:6])] + [pool.alloc(30)]  # fmt: skip
    prefix = [len(systems[i // 3]) for i in range(6)] + [0]
    new_ids = [s[p:] for s, p in zip(seqs, prefix, strict=True)]
    got, ctx = paged_forward(loaded, pool, slots, prefix, new_ids)
    assert sorted((len(sp.members), sp.shared_len) for sp in ctx.metadata.shared) == [
        (3, 25),
        (3, 40),
    ]
    at = 0
    for s, p in zip(seqs, prefix, strict=True):
        n = len(s) - p
        assert (got[at : at + n] - full_logits(loaded, s)[p:]).abs().max().item() <= TOL
        at += n
    for step in range(4):
        new = tokens(len(seqs), 200 + step, vocab)
        prefix = [len(s) for s in seqs]
        slots = [torch.cat([s, pool.alloc(1)]) for s in slots]
        for s, t in zip(seqs, new, strict=True):
            s.append(t)
        got, ctx = paged_forward(loaded, pool, slots, prefix, [[t] for t in new])
        assert len(ctx.metadata.shared) == 2
        for row, s in enumerate(seqs):
            assert (got[row] - full_logits(loaded, s)[-1]).abs().max().item() <= TOL
