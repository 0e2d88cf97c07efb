"""Tiny real tokenizers, trained on the fly, written as Hugging Face tokenizer directories.

`write_tiny_tokenizer` writes a byte-level BPE tokenizer (GPT-2 / SmolLM2 style) that fits
the tiny random models of `tiny_models.py` (vocab 384, bos 1, eos 2). Its ids:

    0  <|endoftext|>   unk and pad token
    1  <|im_start|>    bos token
    2  <|im_end|>      eos token (the end of a ChatML turn)
    3.. 258            the 256 byte-level symbols
    259..              learned merges, up to `vocab_size` tokens in all

`write_tiny_sentencepiece_tokenizer` writes a Llama-2 style tokenizer: BPE over `▁`-marked
words with byte fallback (`<0x00>`..`<0xFF>`), so characters it never saw in training (CJK,
emoji) decode from byte tokens. Its ids: 0 `<unk>`, 1 `<s>` (bos), 2 `</s>` (eos), 3..258 the
byte tokens, then the learned pieces.

Both train in milliseconds and are deterministic for a given `vocab_size`.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

LLAMA2_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

BYTE_LEVEL_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
SENTENCEPIECE_SPECIALS = ("<unk>", "<s>", "</s>")

# A small English text with some punctuation, digits and accented words, enough for a
# few hundred merges.
TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. A serving engine keeps the key and value
cache of every prompt it has seen, so that the next request that starts the same way
does not compute it again. Chat assistants, coding tools and few-shot classifiers share long
system prompts; retrieval pipelines share documents; tree search shares every branch.
The scheduler admits requests while there is room, runs one decode step for all of
them, and streams the tokens back to the client, which turns them into text as they
arrive. Numbers such as 12, 345 and 6789 appear in prompts too, as do dates like
2024-05-17 and times like 09:30. Café, naïve, résumé, façade and jalapeño are words
with accents; über and smörgåsbord are others. Hello, world! How are you today?
I am fine, thank you. What is the capital of France? The capital of France is Paris.
Once upon a time there was a little robot who wanted to learn how to write stories.
It read every book in the library, and then it wrote one of its own.
"""


def _train_bpe(
    tokenizer: Tokenizer, vocab_size: int, specials: tuple[str, ...], alphabet: list[str]
) -> None:
    """Train `tokenizer`'s BPE model in place on TRAINING_TEXT (repeated, for stable counts)."""
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAINING_TEXT.splitlines() * 4, trainer=trainer)


def build_tiny_byte_level_tokenizer(vocab_size: int = 384) -> Tokenizer:
    """A byte-level BPE `tokenizers.Tokenizer` with at most `vocab_size` tokens (ids above)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    _train_bpe(tokenizer, vocab_size, BYTE_LEVEL_SPECIALS, pre_tokenizers.ByteLevel.alphabet())
    assert tokenizer.get_vocab_size() <= vocab_size
    return tokenizer


def build_tiny_sentencepiece_tokenizer(vocab_size: int = 512) -> Tokenizer:
    """A Llama-2 style BPE `tokenizers.Tokenizer` with byte fallback (ids in the module doc).

    Spaces become `▁` in the normalizer (with one prepended), and the decoder turns them
    back, fuses byte tokens into characters and strips the one leading space.
    """
    # Learn the pieces on `▁`-marked words, then rebuild the model with the byte tokens
    # placed at ids 3..258 as Llama-2's vocabulary has them.
    learner = Tokenizer(models.BPE())
    learner.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    learner.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    n_learned = vocab_size - len(SENTENCEPIECE_SPECIALS) - 256
    _train_bpe(learner, n_learned, (), [])
    learned = json.loads(learner.to_str())["model"]
    vocab = {token: i for i, token in enumerate(SENTENCEPIECE_SPECIALS)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for token, _ in sorted(learned["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    )
    tokenizer.normalizer = learner.normalizer
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1, right=0),
        ]
    )
    tokenizer.add_special_tokens(list(SENTENCEPIECE_SPECIALS))
    # Like Llama-2: encoding with special tokens puts `<s>` in front.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return tokenizer


def _write(
    model_dir: Path, tokenizer: Tokenizer, config: dict[str, object], chat_template: str | None
) -> None:
    """Save `tokenizer.json` and a `tokenizer_config.json` made of `config` under `model_dir`."""
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(model_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 512,
        "clean_up_tokenization_spaces": False,
        **config,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def write_tiny_tokenizer(model_dir: Path, vocab_size: int = 384) -> None:
    """Write a byte-level BPE tokenizer with a ChatML chat template into `model_dir`.

    Writes `tokenizer.json` and `tokenizer_config.json`; bos is `<|im_start|>` (id 1),
    eos `<|im_end|>` (id 2), unk/pad `<|endoftext|>` (id 0). No token is added on encode.
    """
    config = {
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "add_bos_token": False,
    }
    _write(model_dir, build_tiny_byte_level_tokenizer(vocab_size), config, CHATML_TEMPLATE)


def write_tiny_sentencepiece_tokenizer(
    model_dir: Path, vocab_size: int = 512, chat_template: str | None = LLAMA2_TEMPLATE
) -> None:
    """Write a Llama-2 style byte-fallback tokenizer into `model_dir`.

    bos `<s>` (id 1), eos `</s>` (id 2), unk `<unk>` (id 0); the chat template is the
    Llama-2 `[INST]` one unless `chat_template` says otherwise (None: no template).
    """
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    tokenizer = build_tiny_sentencepiece_tokenizer(vocab_size)
    _write(model_dir, tokenizer, config, chat_template)
