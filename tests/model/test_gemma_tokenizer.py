"""Gemma's tokenizer conventions, on a Gemma-style tokenizer built here (no hub access).

Gemma's tokenizer adds `<bos>` when it encodes text, and its chat template
writes `<bos>` itself; turns are framed by the special tokens
`<start_of_turn>` / `<end_of_turn>`, and generation ends at `<end_of_turn>`
as well as at `<eos>`. A chat prompt must therefore carry exactly one bos.
"""

from __future__ import annotations

import json

import pytest
from helpers.tiny_tokenizer import build_tiny_sentencepiece_tokenizer

from radixlm.tokenizer import load_tokenizer

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
TURNS = ("<start_of_turn>", "<end_of_turn>")


@pytest.fixture(scope="module")
def gemma_tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("gemma_tok")
    tok = build_tiny_sentencepiece_tokenizer(512)  # <unk> 0, <s> 1, </s> 2; encode adds <s>
    tok.add_special_tokens(list(TURNS))
    tok.save(str(path / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "add_bos_token": True, "additional_special_tokens": list(TURNS),
        "chat_template": GEMMA_TEMPLATE,
    }  # fmt: skip
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2]}))
    return load_tokenizer(path)


def test_a_chat_prompt_has_exactly_one_bos(gemma_tokenizer):
    tok = gemma_tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": "Hello there"}])
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.encode("Hello there")[0] == tok.bos_token_id  # plain text gets bos from encode


def test_turn_markers_are_single_special_tokens_and_end_generation(gemma_tokenizer):
    tok = gemma_tokenizer
    start, end = (tok.hf_tokenizer.convert_tokens_to_ids(t) for t in TURNS)
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert ids.count(start) == 2 and ids.count(end) == 1  # user turn, then the model's
    assert end in tok.eos_token_ids and 2 in tok.eos_token_ids
    text = tok.decode(ids)  # specials skipped
    assert "Hi" in text and not any(t in text for t in (*TURNS, "<s>"))
    assert "<start_of_turn>model\n" in tok.render_chat([{"role": "user", "content": "Hi"}])
