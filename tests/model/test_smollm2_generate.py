"""End to end on the embedded SmolLM2: chat template, greedy answer, streamed text."""

from __future__ import annotations

import io

from radixlm.chat import answer
from radixlm.config import LoadConfig
from radixlm.generation import GenerationParams, generate_tokens
from radixlm.server.args import ChatConfig


def test_capital_of_france_mentions_paris(smollm2):
    loaded, tok = smollm2
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    cfg = ChatConfig(load=LoadConfig(), params=GenerationParams(max_new_tokens=24))
    out = io.StringIO()
    reply = answer(loaded, tok, cfg, ids, out)
    assert "Paris" in out.getvalue()
    # The streamed text is exactly the decode of the generated ids.
    assert out.getvalue().strip() == tok.decode(reply).strip()


def test_greedy_stops_at_end_of_turn(smollm2):
    loaded, tok = smollm2
    ids = tok.apply_chat_template([{"role": "user", "content": "Say hi."}])
    eos = tok.eos_token_ids
    got = list(generate_tokens(loaded.model, ids, GenerationParams(max_new_tokens=64), eos))
    assert got[-1] in eos, "a short chat answer ends with an end-of-turn token"
