"""The native layer loop (`models.decode_stack`) against the module path it replaces.

It calls the modules' kernels in the same order on the same values, so a decode
step through it must give bit-identical logits and write bit-identical K/V: in
float32, bfloat16, int8 and int4, over slot-major and head-major pools, with and
without shared runs, and on the real SmolLM2 in its default mode. Where a model has a
part the loop lacks, it is not built and the modules run.
"""

from __future__ import annotations

import pytest
import torch
from helpers.reference import tokens

from radixlm.attention import cascade
from radixlm.attention.paged import PagedContext, head_major_fits
from radixlm.config import LoadConfig
from radixlm.kvcache.pool import KVPool
from radixlm.loader import load_model
from radixlm.models.decode_stack import DecodeStack
from radixlm.models.quant import int8_activations_supported
from radixlm.native import kernels

pytestmark = pytest.mark.skipif(kernels() is None, reason="the native kernels are not built here")


def decode_both_ways(loaded, pool, seq_slots, prefix_lens, new_ids):
    """One forward by the modules, then the same by the stack over the slots it just wrote;
    returns (module logits, stack logits, whether the stack ran, pool K/V changed, context)."""
    extend = [len(x) for x in new_ids]
    out_loc = torch.cat([s[p:] for s, p in zip(seq_slots, prefix_lens, strict=True)])
    ctx = PagedContext(pool, seq_slots, prefix_lens, extend, out_loc, check=True)
    ids = torch.tensor([t for x in new_ids for t in x])
    model = loaded.model
    ref = model(ids, ctx.positions, ctx, native_layers=False)
    before = pool.k_buffer.clone(), pool.v_buffer.clone()
    ran = model._decode_stack(model.embed_tokens(ids), ctx) is not None
    got = model(ids, ctx.positions, ctx)
    changed = not (torch.equal(before[0], pool.k_buffer) and torch.equal(before[1], pool.v_buffer))
    return ref, got, ran, changed, ctx


def prefill(loaded, pool, seqs):
    """Write every sequence's K/V (one extend forward); returns their slots."""
    slots = [pool.alloc(len(s)) for s in seqs]
    out_loc = torch.cat(slots)
    ctx = PagedContext(pool, slots, [0] * len(seqs), [len(s) for s in seqs], out_loc)
    loaded.model(torch.tensor([t for s in seqs for t in s]), ctx.positions, ctx)
    return slots


MODES = [("float32", "none"), ("bfloat16", "none"), ("bfloat16", "int8"), ("bfloat16", "int4"),
         ("bfloat16", "int4-a8")]  # int8 activations past the decode rows (the default here)


@pytest.mark.parametrize("variant", ["llama3", "qwen2"])
@pytest.mark.parametrize(("dtype", "quant"), MODES)
def test_stack_decodes_bit_identically(variant, dtype, quant, tiny_model_factory, monkeypatch):
    monkeypatch.setattr(cascade, "SHARED_MIN_TOKENS", 8)
    monkeypatch.setattr(cascade, "SHARED_MIN_SAVED", 8)
    quant, a8 = quant.removesuffix("-a8"), quant.endswith("-a8")
    if a8 and not int8_activations_supported():
        pytest.skip("int8 activations need AVX512-VNNI, AVX512-VBMI and AVX512-BF16")
    cfg = LoadConfig(model=str(tiny_model_factory(variant)), dtype=dtype, quantization=quant,
                     activations="int8" if a8 else "bfloat16")  # fmt: skip
    loaded = load_model(cfg, progress=False)
    vocab = loaded.config.vocab_size
    for head_major in {False, head_major_fits(loaded.config, loaded.dtype, loaded.device)}:
        pool = KVPool.for_model(loaded.config, loaded.dtype, loaded.device,
                                max_total_tokens=512, head_major=head_major)  # fmt: skip
        order = torch.randperm(512, generator=torch.Generator().manual_seed(0))
        pool.free(pool.alloc(512)[order])  # scattered slots
        system = tokens(40, 1, vocab)
        (sys_slots,) = prefill(loaded, pool, [system])
        # three requests over the cached system prompt, one of their own
        seqs = [system + tokens(5 + 3 * j, 10 + j, vocab) for j in range(3)]
        seqs.append(tokens(20, 9, vocab))
        own = prefill(loaded, pool, [s[len(system) :] for s in seqs[:3]] + [seqs[3]])
        slots = [torch.cat([sys_slots, o]) for o in own[:3]] + [own[3]]
        for step, shared in enumerate((True, False)):
            batch = slots if shared else slots[3:]  # with shared runs, then without
            lens = [len(s) for s in batch]
            batch = [torch.cat([s, pool.alloc(1)]) for s in batch]
            new = [[t] for t in tokens(len(batch), 50 + step, vocab)]
            ref, got, ran, changed, ctx = decode_both_ways(loaded, pool, batch, lens, new)
            meta = ctx.metadata
            assert bool(meta.shared) == shared
            # every decode but one whose shared runs the torch path attends (the tiny
            # models' head size has no paged_extend: the SmolLM2 test below has shared runs)
            assert ran == (not meta.shared_batches), f"{variant} {dtype}/{quant}"
            assert torch.equal(ref, got), (ref - got).abs().max().item()
            assert not changed  # it rewrote the K/V the modules wrote, bit for bit


@pytest.mark.parametrize("variant", ["qwen3", "gemma2", "mistral_swa", "mixtral"])
def test_stack_is_not_built_for_parts_it_lacks(variant, tiny_model_factory):
    cfg = LoadConfig(model=str(tiny_model_factory(variant)), dtype="float32")
    assert DecodeStack.build(load_model(cfg, progress=False).model) is None


def test_stack_gives_smollm2_its_module_logits(smollm2_path, monkeypatch):
    monkeypatch.setattr(cascade, "SHARED_MIN_TOKENS", 8)
    monkeypatch.setattr(cascade, "SHARED_MIN_SAVED", 8)
    loaded = load_model(LoadConfig(model=str(smollm2_path)), progress=False)  # default mode
    pool = KVPool.for_model(loaded.config, loaded.dtype, loaded.device, max_total_tokens=1024,
                            head_major=head_major_fits(loaded.config, loaded.dtype, loaded.device))
    vocab = loaded.config.vocab_size
    system = tokens(64, 3, vocab)
    (sys_slots,) = prefill(loaded, pool, [system])
    own = prefill(loaded, pool, [tokens(4 + j, 20 + j, vocab) for j in range(4)])
    slots = [torch.cat([sys_slots, o, pool.alloc(1)]) for o in own]
    lens = [len(s) - 1 for s in slots]
    new = [[5], [6], [7], [8]]
    ref, got, ran, changed, ctx = decode_both_ways(loaded, pool, slots, lens, new)
    assert ctx.metadata.shared_runs is not None  # the shared run read in place
    assert ran and torch.equal(ref, got) and not changed
