"""The head-major KV pool (`KVPool(head_major=True)`) on the real SmolLM2: same answers.

Only where K/V live changes, not the arithmetic, so greedy tokens and their logprobs
are identical to a slot-major pool's, with shared prefixes (decode over shared runs,
extends over cached prefixes) and without.
"""

from __future__ import annotations

from helpers.engine_checks import assert_clean

import radixlm
import radixlm.engine.setup as setup
from radixlm.config import LoadConfig
from radixlm.loader import load_model


def test_head_major_pool_gives_the_slot_major_tokens(smollm2, smollm2_path, monkeypatch):
    _, tok = smollm2
    loaded = load_model(LoadConfig(model=str(smollm2_path), dtype="bfloat16"), progress=False)
    system = "You are a concise assistant. Answer in one short sentence. " * 8
    prompts = [
        tok.apply_chat_template([{"role": "system", "content": system},
                                 {"role": "user", "content": q}])
        for q in ("What is the capital of France?", "What do bees make?", "Name a colour.")
    ] + [tok.encode("The quick brown fox")]  # fmt: skip
    params = {"temperature": 0, "max_new_tokens": 10}
    runs, layouts = [], []
    for head_major in (True, False):
        if not head_major:
            monkeypatch.setattr(setup, "head_major_fits", lambda *a: False)
        eng = radixlm.Engine(loaded=loaded, tokenizer=tok, max_total_tokens=4096)
        eng.generate(input_ids=prompts[:1], sampling_params=params)  # cache the system prompt
        runs.append(eng.generate(input_ids=prompts, sampling_params=params, return_logprob=True))
        layouts.append(eng.scheduler.kv.pool.head_major)
        assert_clean(eng)
        eng.shutdown()
    assert layouts == [True, False]
    a, b = runs
    assert sum(r["meta_info"]["cached_tokens"] for r in a) > 3 * 60  # shared runs were read
    assert [r["output_ids"] for r in a] == [r["output_ids"] for r in b]
    assert [r["meta_info"]["output_token_logprobs"] for r in a] == [
        r["meta_info"]["output_token_logprobs"] for r in b
    ]
    assert "Paris" in a[0]["text"]
