"""Batched sampler: seeds, greedy equivalences, filters, penalties, masks, logprobs."""

from __future__ import annotations

import pytest
import torch

from radixlm.sampling import (
    SamplingBatch,
    SamplingParams,
    draw_from_probs,
    filter_probs,
    process_logits,
    sample,
    seeded_uniform,
    token_logprobs,
)

PROBS5 = [0.4, 0.3, 0.15, 0.1, 0.05]


def make_batch(*params: SamplingParams, vocab: int, eos: tuple[int, ...] = ()) -> SamplingBatch:
    return SamplingBatch.build(list(params), "cpu", vocab, eos)


def log_probs5(rows: int) -> torch.Tensor:
    """Logits [rows, 5] whose softmax is PROBS5."""
    return torch.tensor(PROBS5).log().expand(rows, 5).contiguous()


def draw_frequencies(params: SamplingParams, rows: int = 20_000, seed: int = 0) -> torch.Tensor:
    """Empirical token frequencies [5] of `rows` independent draws from PROBS5."""
    batch = make_batch(*([params] * rows), vocab=5)
    gen = torch.Generator().manual_seed(seed)
    out = sample(log_probs5(rows), batch, [[] for _ in range(rows)], generator=gen)
    return torch.bincount(out.next_token_ids, minlength=5).float() / rows


def run_steps(
    params: list[SamplingParams],
    logits_for_step,
    steps: int,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Decode `steps` tokens for every row with the logits `logits_for_step(step)` [B, V]."""
    outputs: list[list[int]] = [[] for _ in params]
    prompts = [[1, 2, 3] for _ in params]
    for step in range(steps):
        logits = logits_for_step(step)
        batch = make_batch(*params, vocab=logits.shape[1], eos=(0,))
        out = sample(logits, batch, outputs, prompts, generator=generator)
        for row, tok in zip(outputs, out.next_token_ids.tolist(), strict=True):
            row.append(tok)
    return outputs


# ---------------------------------------------------------------------- seeds


@pytest.mark.parametrize(
    ("target", "vocab"),
    [
        (SamplingParams(temperature=1.0, seed=1234), 64),
        (SamplingParams(temperature=0.8, top_p=0.9, top_k=20, min_p=0.02, seed=99), 64),
        (
            SamplingParams(temperature=1.2, repetition_penalty=1.2, frequency_penalty=0.3, seed=-5),
            64,
        ),
        # A realistic vocabulary: long rows are where reductions may split across threads.
        (SamplingParams(temperature=0.9, top_p=0.95, seed=2024), 50_000),
    ],
)
def test_seed_reproduces_regardless_of_batch_and_row(target, vocab):
    steps = 20
    gen = torch.Generator().manual_seed(0)
    own = [torch.randn(vocab, generator=gen) * 2 for _ in range(steps)]  # fixed logits per step
    alone = run_steps([target], lambda s: own[s].view(1, -1), steps)[0]

    others = [
        SamplingParams(temperature=0.0),
        SamplingParams(top_p=0.5, top_k=5, min_p=0.1, logit_bias={3: 2.0}),
        SamplingParams(temperature=0.7, seed=7, presence_penalty=1.0, min_new_tokens=3),
        SamplingParams(temperature=1.5, repetition_penalty=1.5, frequency_penalty=-0.5),
    ]
    params = [*others[:3], target, others[3]]  # target at row 3 of 5

    def batch_logits(step: int) -> torch.Tensor:
        logits = torch.randn(5, vocab, generator=gen)
        logits[3] = own[step]
        return logits

    together = run_steps(params, batch_logits, steps, generator=torch.Generator().manual_seed(5))
    assert together[3] == alone
    assert run_steps([target], lambda s: own[s].view(1, -1), steps)[0] == alone


def test_different_seeds_differ():
    vocab = 64
    logits = torch.zeros(1, vocab)  # uniform: 20 equal tokens in a row would be a 64**-19 event
    a = run_steps([SamplingParams(seed=1)], lambda s: logits, 20)[0]
    b = run_steps([SamplingParams(seed=2)], lambda s: logits, 20)[0]
    assert a != b
    assert len(set(a)) > 1  # the step counter changes the draw


def test_unseeded_rows_follow_the_generator():
    logits = torch.zeros(4, 32)
    params = [SamplingParams()] * 4
    a = run_steps(params, lambda s: logits, 5, torch.Generator().manual_seed(3))
    b = run_steps(params, lambda s: logits, 5, torch.Generator().manual_seed(3))
    assert a == b


def _mix64_reference(x: int) -> int:
    mask = (1 << 64) - 1
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & mask
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)


def test_seeded_uniform_matches_an_integer_reference():
    mask = (1 << 64) - 1
    seeds, steps = [0, 12345, -7, 2**63 + 5, 2**64 - 1], [0, 3, 100, 1, 7]
    as_i64 = [((s & mask) ^ (1 << 63)) - (1 << 63) for s in seeds]
    got = seeded_uniform(torch.tensor(as_i64), torch.tensor(steps))  # [5] float64
    for value, seed, step in zip(got.tolist(), seeds, steps, strict=True):
        state = (_mix64_reference(seed & mask) + (step + 1) * 0x9E3779B97F4A7C15) & mask
        assert value == (_mix64_reference(state) >> 11) / 2**53
    assert got.dtype == torch.float64 and ((got >= 0) & (got < 1)).all()


def test_seeded_uniforms_look_uniform():
    u = seeded_uniform(torch.arange(5000), torch.zeros(5000, dtype=torch.long))
    counts = torch.histc(u.float(), bins=10, min=0.0, max=1.0)
    assert counts.min() > 400 and counts.max() < 600
    v = seeded_uniform(torch.full((5000,), 42), torch.arange(5000))  # one seed, many steps
    assert 0.48 < float(v.mean()) < 0.52 and len(set(v.tolist())) == 5000


# ------------------------------------------------------------ greedy and limits


def test_top_k_one_and_zero_temperature_equal_greedy():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 100, generator=gen)
    expected = logits.argmax(dim=-1)
    for params in (SamplingParams(top_k=1), SamplingParams(temperature=0.0)):
        batch = make_batch(*([params] * 8), vocab=100)
        assert torch.equal(sample(logits, batch, [[]] * 8).next_token_ids, expected)


def test_tiny_temperature_samples_the_argmax():
    # Distinct logits 0.1 apart: at temperature 1e-4 the runner-up has weight exp(-1000).
    gen = torch.Generator().manual_seed(2)
    logits = torch.stack([torch.randperm(50, generator=gen).float() * 0.1 for _ in range(16)])
    for temperature in (1e-7, 1e-4):  # the greedy path, then the sampling path
        batch = make_batch(*([SamplingParams(temperature=temperature)] * 16), vocab=50)
        out = sample(logits, batch, [[]] * 16, generator=gen)
        assert torch.equal(out.next_token_ids, logits.argmax(dim=-1))


def test_all_greedy_batch_does_not_touch_the_global_rng():
    state = torch.get_rng_state()
    batch = make_batch(SamplingParams(temperature=0), SamplingParams(top_k=1), vocab=10)
    sample(torch.randn(2, 10, generator=torch.Generator()), batch, [[], []])
    assert torch.equal(torch.get_rng_state(), state)
    assert batch.all_greedy and not (batch.need_top_k or batch.need_top_p or batch.need_min_p)


def test_greedy_rows_ignore_their_filters():
    logits = torch.tensor([[0.0, 5.0, 1.0, 2.0]])
    batch = make_batch(SamplingParams(temperature=0, top_p=0.1, min_p=0.9, top_k=2), vocab=4)
    assert not (batch.need_top_p or batch.need_min_p or batch.need_top_k)
    assert sample(logits, batch, [[]]).next_token_ids.tolist() == [1]


# -------------------------------------------------------------------- filters


def kept(params: SamplingParams) -> set[int]:
    probs = torch.tensor([PROBS5])
    filtered = filter_probs(probs, make_batch(params, vocab=5))
    return set(torch.nonzero(filtered[0]).view(-1).tolist())


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (SamplingParams(top_p=0.5), {0, 1}),
        (SamplingParams(top_p=0.75), {0, 1, 2}),
        (SamplingParams(top_p=0.1), {0}),
        (SamplingParams(top_p=0.99), {0, 1, 2, 3, 4}),
        (SamplingParams(min_p=0.3), {0, 1, 2}),  # threshold 0.12
        (SamplingParams(min_p=0.5), {0, 1}),  # threshold 0.2
        (SamplingParams(min_p=1.0), {0}),
        (SamplingParams(top_k=3), {0, 1, 2}),
        (SamplingParams(top_k=10), {0, 1, 2, 3, 4}),
        # top-p measured on the top-k survivors: [.4, .3, .15] / .85 -> the head {0, 1} has .82
        (SamplingParams(top_k=3, top_p=0.8), {0, 1}),
        (SamplingParams(top_p=0.8), {0, 1, 2}),
    ],
)
def test_filter_keeps_exactly_the_expected_set(params, expected):
    assert kept(params) == expected


@pytest.mark.parametrize(
    ("params", "support"),
    [
        (SamplingParams(top_p=0.75), [0, 1, 2]),
        (SamplingParams(min_p=0.5), [0, 1]),
        (SamplingParams(top_k=4), [0, 1, 2, 3]),
    ],
)
def test_empirical_support_and_renormalised_frequencies(params, support):
    freq = draw_frequencies(params, rows=20_000)
    assert set(torch.nonzero(freq).view(-1).tolist()) == set(support)
    mass = sum(PROBS5[i] for i in support)
    for i in support:
        assert freq[i].item() == pytest.approx(PROBS5[i] / mass, abs=0.02)


def test_filters_in_one_batch_are_per_row():
    batch = make_batch(
        SamplingParams(top_p=0.5), SamplingParams(), SamplingParams(top_k=2), vocab=5
    )
    filtered = filter_probs(torch.tensor([PROBS5] * 3), batch)
    assert [int((row > 0).sum()) for row in filtered] == [2, 5, 2]
    assert torch.equal(filtered[1], torch.tensor(PROBS5))  # unfiltered row: bit-identical


def test_top_p_partial_sort_agrees_with_full_sort():
    # Quantised logits give many exact ties; a wide flat row forces the full sort.
    gen = torch.Generator().manual_seed(6)
    vocab = 1000
    target = (torch.randn(vocab, generator=gen) * 4).round() / 2  # ties everywhere
    flat = torch.zeros(vocab)  # top_p 0.999 needs ~999 tokens: beyond the partial head
    narrow = SamplingParams(top_p=0.6, top_k=300, temperature=0.7)
    wide = SamplingParams(top_p=0.999)
    probs_alone = torch.softmax(target / 0.7, dim=-1).view(1, -1)
    alone = filter_probs(probs_alone, make_batch(narrow, vocab=vocab))
    both = torch.stack([torch.softmax(target / 0.7, dim=-1), torch.softmax(flat, dim=-1)])
    together = filter_probs(both, make_batch(narrow, wide, vocab=vocab))
    assert torch.equal(alone[0], together[0])
    kept = alone[0] > 0
    # Threshold semantics: every token tied with a kept one is kept.
    assert torch.equal(kept, probs_alone[0] >= probs_alone[0][kept].min())
    assert int((together[1] > 0).sum()) >= 999


def test_draw_never_picks_a_zero_probability_token():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0]] * 4)
    uniforms = torch.tensor([[0.0], [0.4999], [0.5], [1.0 - 2**-53]], dtype=torch.float64)
    assert draw_from_probs(probs, uniforms).tolist() == [1, 1, 3, 3]
    assert draw_from_probs(torch.tensor([[0.0, 0.0, 2.0]]), uniforms[3:]).tolist() == [2]


@pytest.mark.parametrize("seeded", [False, True])
def test_temperature_one_follows_the_softmax(seeded):
    rows = 20_000
    params = [SamplingParams(seed=i if seeded else None) for i in range(rows)]
    batch = make_batch(*params, vocab=5)
    out = sample(log_probs5(rows), batch, [[] for _ in range(rows)])
    freq = torch.bincount(out.next_token_ids, minlength=5).float() / rows
    expected = torch.tensor(PROBS5)
    assert torch.allclose(freq, expected, atol=0.02)
    chi2 = float((((freq - expected) * rows) ** 2 / (expected * rows)).sum())
    assert chi2 < 25.0  # 4 degrees of freedom: p < 1e-4


def test_temperature_two_flattens_as_expected():
    freq = draw_frequencies(SamplingParams(temperature=2.0))
    expected = torch.softmax(torch.tensor(PROBS5).log() / 2.0, dim=0)
    assert torch.allclose(freq, expected, atol=0.02)


# ------------------------------------------------------- penalties and masks


def test_penalties_bias_and_mask_adjust_logits_exactly():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0, 1.0, 0.0]] * 2)
    original = logits.clone()
    penalised = SamplingParams(
        repetition_penalty=2.0,
        frequency_penalty=0.5,
        presence_penalty=0.25,
        logit_bias={"5": 1.5},
    )
    batch = make_batch(penalised, SamplingParams(), vocab=6)
    outputs = [[1, 1, 4], [1, 1, 4]]
    prompts = [[2], [2]]
    got = process_logits(logits, batch, outputs, prompts)
    # token 1 (out x2): -1*2 - 0.5*2 - 0.25; token 4 (out x1): 1/2 - 0.5 - 0.25;
    # token 2 (prompt only): 0.5/2; token 5: bias 1.5.
    expected = torch.tensor([2.0, -3.25, 0.25, -3.0, -0.25, 1.5])
    assert torch.allclose(got[0], expected, atol=1e-6)
    assert torch.equal(got[1], original[1])  # the other row is untouched
    assert torch.equal(logits, original)  # the input is not modified


def test_negative_penalties_encourage_repeats():
    batch = make_batch(SamplingParams(frequency_penalty=-1.0, presence_penalty=-0.5), vocab=3)
    got = process_logits(torch.zeros(1, 3), batch, [[2, 2]], [[0]])
    assert got[0].tolist() == [0.0, 0.0, 2.5]


def test_repetition_penalty_needs_prompts():
    batch = make_batch(SamplingParams(repetition_penalty=1.3), vocab=3)
    with pytest.raises(ValueError, match="prompt_ids"):
        sample(torch.zeros(1, 3), batch, [[1]], None)


def test_nothing_to_process_returns_the_input():
    logits = torch.randn(2, 5)
    batch = make_batch(SamplingParams(), SamplingParams(min_new_tokens=1), vocab=5, eos=(0,))
    assert process_logits(logits, batch, [[], [3]]) is logits  # min_new_tokens already met


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_min_new_tokens_blocks_eos_and_stop_ids(temperature):
    vocab, eos, stop = 8, 0, 5
    logits = torch.zeros(1, vocab)
    logits[0, eos] = 20.0
    logits[0, stop] = 19.0
    params = SamplingParams(
        temperature=temperature, min_new_tokens=3, stop_token_ids=[stop], ignore_eos=True
    )
    batch = make_batch(params, vocab=vocab, eos=(eos,))
    output: list[int] = []
    for _ in range(4):
        tok = int(sample(logits, batch, [output], generator=torch.Generator()).next_token_ids[0])
        output.append(tok)
    assert eos not in output[:3] and stop not in output[:3]
    assert output[3] in (eos, stop)


def test_out_of_vocab_ids_are_ignored_by_build():
    params = SamplingParams(logit_bias={99: 5.0}, stop_token_ids=[99], min_new_tokens=1)
    batch = make_batch(params, vocab=4, eos=(99,))
    assert batch.bias_rows is None and batch.banned_rows is None


# ------------------------------------------------------------------- logprobs


def test_logprobs_are_log_softmax_of_processed_logits():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 20, generator=gen)
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.5, top_p=0.3, frequency_penalty=1.0),
        SamplingParams(temperature=2.0, top_k=3),
    ]
    batch = make_batch(*params, vocab=20)
    outputs = [[1], [2, 2], [3]]
    out = sample(
        logits, batch, outputs, generator=gen, return_logprobs=True, top_logprobs_num=[5, 0, 2]
    )
    ref = torch.log_softmax(process_logits(logits, batch, outputs), dim=-1)
    ids = out.next_token_ids
    assert torch.allclose(out.logprobs, ref.gather(1, ids.view(-1, 1)).view(-1), atol=1e-5)
    assert out.top_logprobs.shape == (3, 5) and out.top_logprobs_ids.shape == (3, 5)
    assert torch.all(out.top_logprobs[:, :-1] >= out.top_logprobs[:, 1:])
    assert torch.allclose(out.top_logprobs, ref.gather(1, out.top_logprobs_ids), atol=1e-5)
    assert torch.allclose(out.top_logprobs, ref.topk(5, dim=-1).values, atol=1e-5)
    _, lps, tops = out.to_lists()
    assert [len(t) for t in tops] == [5, 0, 2] and len(lps) == 3
    assert tops[0][0][0] == int(ids[0])  # the greedy row's choice is its top alternative


def test_temperature_scaled_logprobs():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    batch = make_batch(SamplingParams(temperature=0.5), vocab=3)
    out = sample(logits, batch, [[]], return_logprobs=True, temperature_scaled_logprobs=True)
    ref = torch.log_softmax(logits / 0.5, dim=-1)[0, out.next_token_ids[0]]
    assert out.logprobs[0].item() == pytest.approx(ref.item(), abs=1e-6)
    assert out.top_logprobs is None


def test_token_logprobs_for_prompt_scoring():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(7, 11, generator=gen)
    next_ids = torch.randint(0, 11, (7,), generator=gen)
    ref = torch.log_softmax(logits, dim=-1)
    lp, top_ids, top_vals = token_logprobs(logits, next_ids, top_k=3, chunk_rows=3)
    assert torch.allclose(lp, ref.gather(1, next_ids.view(-1, 1)).view(-1), atol=1e-6)
    assert torch.allclose(top_vals, ref.topk(3, dim=-1).values, atol=1e-6)
    assert torch.equal(top_ids, ref.topk(3, dim=-1).indices)
    lp_whole, _, _ = token_logprobs(logits.to(torch.bfloat16), next_ids)
    assert lp_whole.dtype == torch.float32
    lp0, ids0, vals0 = token_logprobs(logits, next_ids, top_k=0)
    assert torch.equal(lp0, lp) and ids0.shape == (7, 0) and vals0.shape == (7, 0)
    assert token_logprobs(logits, next_ids, top_k=50)[1].shape == (7, 11)
    with pytest.raises(ValueError):
        token_logprobs(logits, next_ids[:3])


def test_shape_mismatch_is_rejected():
    batch = make_batch(SamplingParams(), vocab=5)
    with pytest.raises(ValueError):
        sample(torch.zeros(1, 6), batch, [[]])
    with pytest.raises(ValueError):
        sample(torch.zeros(1, 5), batch, [[], []])
