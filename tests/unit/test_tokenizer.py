"""load_tokenizer and Tokenizer on tiny trained tokenizers: ids, decode, chat template, eos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.tiny_models import BASE
from helpers.tiny_tokenizer import (
    CHATML_TEMPLATE,
    build_tiny_byte_level_tokenizer,
    write_tiny_sentencepiece_tokenizer,
    write_tiny_tokenizer,
)

from radixlm.tokenizer import ChatTemplateError, Tokenizer, load_tokenizer

CHAT = [
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": "Hello, café? 你好 👋"},
    {"role": "assistant", "content": "Hi there."},
    {"role": "user", "content": "Again"},
]


@pytest.fixture(scope="module")
def byte_level_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("byte_level")
    write_tiny_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def byte_level(byte_level_dir) -> Tokenizer:
    return load_tokenizer(byte_level_dir)


@pytest.fixture(scope="module")
def sentencepiece(tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("sentencepiece")
    write_tiny_sentencepiece_tokenizer(path)
    return load_tokenizer(str(path))


def test_tiny_tokenizer_matches_the_tiny_models(byte_level):
    assert byte_level.vocab_size <= BASE["vocab_size"]
    assert byte_level.bos_token_id == BASE["bos_token_id"] == 1
    assert byte_level.eos_token_ids == (BASE["eos_token_id"],) == (2,)
    assert byte_level.hf_tokenizer.convert_ids_to_tokens([0, 1, 2]) == [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
    ]
    assert byte_level.chat_template == CHATML_TEMPLATE


def test_tiny_tokenizer_is_deterministic_and_exactly_sized():
    assert build_tiny_byte_level_tokenizer().to_str() == build_tiny_byte_level_tokenizer().to_str()
    assert build_tiny_byte_level_tokenizer(300).get_vocab_size() == 300


def test_directory_with_model_config_loads_tokenizer_json_as_written(tmp_path):
    # Tiny model directories say model_type "llama"; the byte-level tokenizer must stay one.
    write_tiny_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", **BASE}))
    raw = build_tiny_byte_level_tokenizer()
    text = "Hello world, naïve café!"
    assert load_tokenizer(tmp_path).encode(text) == raw.encode(text).ids


@pytest.mark.parametrize("text", ["Hello world", " leading space", "café 你好 👋🏽\n\ttabs  "])
def test_encode_decode_round_trip(byte_level, sentencepiece, text):
    for tok in (byte_level, sentencepiece):
        assert tok.decode(tok.encode(text)) == text
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_add_special_tokens(byte_level, sentencepiece):
    assert byte_level.encode("hi") == byte_level.encode("hi", add_special_tokens=False)
    with_bos = sentencepiece.encode("hi")
    assert with_bos[0] == sentencepiece.bos_token_id == 1
    assert with_bos[1:] == sentencepiece.encode("hi", add_special_tokens=False)


def test_decode_skip_special_tokens(byte_level):
    ids = [1, *byte_level.encode("user"), 2, 0]
    assert byte_level.decode(ids) == "user"
    assert (
        byte_level.decode(ids, skip_special_tokens=False)
        == "<|im_start|>user<|im_end|><|endoftext|>"
    )
    assert byte_level.special_token_ids == {0, 1, 2}


def test_chatml_template_rendering_and_ids(byte_level):
    text = byte_level.render_chat(CHAT)
    expected = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in CHAT)
    assert text == expected + "<|im_start|>assistant\n"
    assert byte_level.render_chat(CHAT, add_generation_prompt=False) == expected
    ids = byte_level.apply_chat_template(CHAT)
    assert ids == byte_level.encode(text, add_special_tokens=False)
    assert ids[0] == 1 and ids.count(2) == len(CHAT)  # markers are single special tokens
    hf_ids = byte_level.hf_tokenizer.apply_chat_template(
        CHAT, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert ids == list(hf_ids)


def test_template_bos_is_not_doubled(sentencepiece):
    messages = [{"role": "user", "content": "Hi"}]
    assert sentencepiece.render_chat(messages) == "<s>[INST] Hi [/INST]"
    ids = sentencepiece.apply_chat_template(messages)
    assert ids[0] == 1 and ids[1] != 1


def test_template_kwargs_reach_the_template(tmp_path):
    write_tiny_tokenizer(tmp_path)
    config_path = tmp_path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = "{{ greeting }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    config_path.write_text(json.dumps(config))
    tok = load_tokenizer(tmp_path)
    assert tok.render_chat([{"role": "user", "content": "x"}], greeting="hey ") == "hey x"


def test_chat_template_from_jinja_file(tmp_path):
    write_tiny_sentencepiece_tokenizer(tmp_path, chat_template=None)
    (tmp_path / "chat_template.jinja").write_text(CHATML_TEMPLATE)
    tok = load_tokenizer(tmp_path)
    assert tok.chat_template == CHATML_TEMPLATE
    assert tok.render_chat([{"role": "user", "content": "a"}], add_generation_prompt=False) == (
        "<|im_start|>user\na<|im_end|>\n"
    )


def test_no_chat_template_is_a_clear_error(tmp_path):
    write_tiny_sentencepiece_tokenizer(tmp_path, chat_template=None)
    tok = load_tokenizer(tmp_path)
    assert tok.chat_template is None
    with pytest.raises(ChatTemplateError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    with pytest.raises(ValueError, match="no chat template"):
        tok.render_chat([{"role": "user", "content": "hi"}])


def test_chatml_end_of_turn_counts_as_eos(tmp_path):
    # eos is <|endoftext|>, but a ChatML reply ends with <|im_end|>: both must stop.
    write_tiny_tokenizer(tmp_path)
    config_path = tmp_path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["eos_token"] = "<|endoftext|>"
    config_path.write_text(json.dumps(config))
    assert load_tokenizer(tmp_path).eos_token_ids == (0, 2)


def test_generation_config_and_extra_eos_ids(tmp_path, sentencepiece):
    write_tiny_sentencepiece_tokenizer(tmp_path)
    assert sentencepiece.eos_token_ids == (2,)  # the [INST] template writes no end-of-turn
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    assert load_tokenizer(tmp_path).eos_token_ids == (2, 7)
    assert load_tokenizer(tmp_path, extra_eos_token_ids=[9, 2]).eos_token_ids == (2, 9, 7)


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        load_tokenizer(tmp_path / "absent")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "weights.bin")


def test_repr_names_the_ids(byte_level):
    assert "bos=1" in repr(byte_level) and "eos=(2,)" in repr(byte_level)
