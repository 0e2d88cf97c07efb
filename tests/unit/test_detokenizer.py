"""Incremental detokenization and stop strings, on tiny byte-level and byte-fallback tokenizers."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import pytest
from helpers.tiny_tokenizer import write_tiny_sentencepiece_tokenizer, write_tiny_tokenizer

from radixlm.detokenizer import (
    IncrementalDetokenizer,
    StopStringMatcher,
    TextStream,
    truncate_at_stop,
)
from radixlm.tokenizer import Tokenizer, load_tokenizer

TEXTS = {
    "ascii": "The quick brown fox jumps over the lazy dog.",
    "accents": "Café, naïve, résumé, façade, jalapeño, smörgåsbord, Ångström, Œuvre.",
    "cjk": "你好，世界！日本語のテキストです。한국어 문장입니다.",
    "emoji": "👋🏽 hi 🎉🎉 family 👨‍👩‍👧‍👦 flag 🇫🇷 ok 👍",
    "mixed": "  Leading spaces, tabs\tand\nnewlines: 你好 café 🎉 x=1; y≠2 → done  ",
    "rare": "\u0301 combining, \u200b zero width, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢, \U0001f9ea",
}


@pytest.fixture(scope="module", params=["byte_level", "sentencepiece"])
def tokenizer(request, tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp(request.param)
    write = (
        write_tiny_tokenizer
        if request.param == "byte_level"
        else write_tiny_sentencepiece_tokenizer
    )
    write(path)
    return load_tokenizer(path)


def chunks(ids: Sequence[int], rng: random.Random, largest: int = 5) -> Iterator[list[int]]:
    """`ids` cut into consecutive pieces of random sizes 1..largest."""
    i = 0
    while i < len(ids):
        n = rng.randint(1, largest)
        yield list(ids[i : i + n])
        i += n


def stream(tok: Tokenizer, pieces, skip_special_tokens: bool = True, prompt=()) -> list[str]:
    """Every delta of an IncrementalDetokenizer fed `pieces`, the final flush last."""
    detok = IncrementalDetokenizer(tok, skip_special_tokens, prompt)
    return [detok.add(piece) for piece in pieces] + [detok.flush()]


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_one_token_at_a_time(tokenizer, name):
    ids = tokenizer.encode(TEXTS[name], add_special_tokens=False)
    deltas = stream(tokenizer, [[i] for i in ids])
    assert "".join(deltas) == tokenizer.decode(ids) == TEXTS[name]
    assert not any("\ufffd" in d for d in deltas)


@pytest.mark.parametrize("seed", range(4))
def test_random_chunk_sizes(tokenizer, seed):
    rng = random.Random(seed)
    text = " ".join(rng.sample(list(TEXTS.values()), k=len(TEXTS)))
    ids = tokenizer.encode(text)
    deltas = stream(tokenizer, chunks(ids, rng))
    assert "".join(deltas) == tokenizer.decode(ids)
    assert not any("\ufffd" in d for d in deltas)


@pytest.mark.parametrize("skip", [True, False])
def test_special_tokens_in_the_middle(tokenizer, skip):
    words = ["Hello", " world", " 你好", " 🎉", " café", " end"]
    ids: list[int] = [tokenizer.bos_token_id]
    for word in words:  # a special id between every word
        ids += [*tokenizer.encode(word, add_special_tokens=False), tokenizer.eos_token_ids[0]]
    deltas = stream(tokenizer, [[i] for i in ids], skip_special_tokens=skip)
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=skip)
    assert not any("\ufffd" in d for d in deltas)


def test_multibyte_characters_wait_for_their_last_byte(tokenizer):
    ids = tokenizer.encode("🎉", add_special_tokens=False)
    assert len(ids) > 1  # split over several byte tokens in both tiny vocabularies
    detok = IncrementalDetokenizer(tokenizer)
    assert [detok.add([i]) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert detok.pending_ids == len(ids) - 1
    assert detok.add(ids[-1:]) == "🎉"
    assert detok.flush() == ""


def test_flush_releases_an_incomplete_character(tokenizer):
    ids = tokenizer.encode("a🎉", add_special_tokens=False)[:-1]
    detok = IncrementalDetokenizer(tokenizer)
    held = "".join(detok.add([i]) for i in ids)
    assert held == "a"
    tail = detok.flush()
    assert tail.endswith("\ufffd") and held + tail == tokenizer.decode(ids)


def test_prompt_context_keeps_the_leading_space(tokenizer):
    ids = tokenizer.encode("Answer: the capital is Paris, café 🎉.")
    pieces = tokenizer.hf_tokenizer.convert_ids_to_tokens(ids)
    cut = next(i for i, piece in enumerate(pieces) if piece[1:] == "capital")
    assert pieces[cut][0] in "▁Ġ"  # the output starts with a word that carries its space
    prompt, output = ids[:cut], ids[cut:]
    deltas = stream(tokenizer, [[i] for i in output], prompt=prompt)
    whole, before = tokenizer.decode(ids), tokenizer.decode(prompt)
    assert "".join(deltas) == whole[len(before) :] == " capital is Paris, café 🎉."
    # Without the prompt, a SentencePiece decoder drops the space of a text's first word.
    assert "".join(stream(tokenizer, [output])).strip() == "capital is Paris, café 🎉."


def test_byte_level_streams_any_id_sequence_exactly(tmp_path):
    # Byte-level decoding is left to right, so even invalid UTF-8 streams to the same text.
    write_tiny_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path)
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(1, 40))]
        assert "".join(stream(tok, chunks(ids, rng, 3))) == tok.decode(ids)


def test_work_per_step_does_not_grow_with_the_text(tokenizer):
    decoded_lengths: list[int] = []
    decode_raw = tokenizer.decode_raw

    class Spy:  # the tokenizer, recording the length of every window decoded
        special_token_ids = tokenizer.special_token_ids

        @staticmethod
        def decode_raw(ids):
            decoded_lengths.append(len(ids))
            return decode_raw(ids)

    ids = tokenizer.encode(" ".join(TEXTS.values()) * 20, add_special_tokens=False)
    detok = IncrementalDetokenizer(Spy())  # type: ignore[arg-type]
    text = "".join(detok.add([i]) for i in ids) + detok.flush()
    assert text == tokenizer.decode(ids)
    assert len(ids) > 1000 and max(decoded_lengths) <= 16


# --- stop strings -----------------------------------------------------------------------


def feed_all(matcher: StopStringMatcher, deltas: Sequence[str]) -> tuple[list[str], str | None]:
    """The texts released for each delta (plus the flush when no stop matched), and the stop."""
    out = []
    for delta in deltas:
        step = matcher.feed(delta)
        out.append(step.text)
        if step.finished:
            return out, step.stop
    return [*out, matcher.flush()], None


def test_stop_string_spanning_deltas():
    out, stop = feed_all(StopStringMatcher(["<END>"]), ["abc<E", "N", "D>after"])
    assert out == ["abc", "", ""] and stop == "<END>"


def test_no_stop_trim_keeps_the_stop_string():
    out, stop = feed_all(StopStringMatcher(["<END>"], no_stop_trim=True), ["abc<E", "ND>after"])
    assert out == ["abc", "<END>"] and stop == "<END>"


def test_held_back_text_is_released_when_the_match_fails():
    matcher = StopStringMatcher(["STOP"])
    assert matcher.feed("go ST").text == "go "
    assert matcher.held_back == "ST"
    assert matcher.feed("O").text == ""
    assert matcher.feed("RM").text == "STORM"
    assert matcher.feed("S").text == ""
    assert matcher.flush() == "S"


def test_stop_that_is_a_prefix_of_another():
    # "ab" completes before "abc" could, so it wins, streamed or whole.
    assert truncate_at_stop("xabcy", ["abc", "ab"]) == ("x", "ab")
    out, stop = feed_all(StopStringMatcher(["abc", "ab"]), ["x", "a", "b", "c"])
    assert "".join(out) == "x" and stop == "ab"
    # Ending at the same place, the longer one wins: no stop string is left in the text.
    assert truncate_at_stop("xaab", ["ab", "aab"]) == ("x", "aab")
    # The one that ends first wins even when another starts earlier.
    assert truncate_at_stop("abcd", ["abcd", "bc"]) == ("a", "bc")
    assert truncate_at_stop("abcd", ["abcd", "bc"], no_stop_trim=True) == ("abc", "bc")


def test_after_a_match_nothing_more_is_released():
    matcher = StopStringMatcher(["\n\n"])
    assert matcher.feed("one\n\ntwo").text == "one"
    assert matcher.feed("three") == matcher.feed("") and matcher.feed("x").stop == "\n\n"
    assert matcher.flush() == "" and matcher.matched == "\n\n"


def test_without_stop_strings_text_passes_straight_through():
    matcher = StopStringMatcher(["", ""])
    assert matcher.stop_strings == ()
    assert [matcher.feed(d).text for d in ["a", "b", ""]] == ["a", "b", ""]
    assert truncate_at_stop("abc", []) == ("abc", None)


@pytest.mark.parametrize("no_stop_trim", [False, True])
def test_streamed_stops_agree_with_whole_text(no_stop_trim):
    # Random texts over a tiny alphabet, so stops overlap and repeat often.
    rng = random.Random(1)
    for _ in range(500):
        stops = ["".join(rng.choices("ab", k=rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        text = "".join(rng.choices("abc", k=rng.randint(0, 20)))
        expected = truncate_at_stop(text, stops, no_stop_trim)
        matcher = StopStringMatcher(stops, no_stop_trim)
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(1, 6))))
        pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        sent, stop = "", None
        for piece in pieces:
            step = matcher.feed(piece)
            sent += step.text
            assert expected[0].startswith(sent)  # nothing sent is ever taken back
            stop = stop or step.stop
        if stop is None:
            sent += matcher.flush()
        assert (sent, stop) == expected
        assert no_stop_trim or not any(s in sent for s in stops)


# --- detokenizer and stop strings together ------------------------------------------------


def test_text_stream_stops_across_token_boundaries(tokenizer):
    ids = tokenizer.encode("Sure: café 🎉 done. The end", add_special_tokens=False)
    stop = "é 🎉 do"  # spans several tokens, multi-byte ones included
    text_stream = TextStream(tokenizer, [stop, "never"])
    sent = [text_stream.add([i]) for i in ids]
    stopped = [step for step in sent if step.finished]
    assert stopped and stopped[0].stop == stop == text_stream.stop
    assert "".join(step.text for step in sent) == text_stream.text == "Sure: caf"
    assert text_stream.finish().text == ""


def test_text_stream_without_a_match_sends_everything(tokenizer):
    ids = tokenizer.encode("Sure: café 🎉 done. The en", add_special_tokens=False)
    text_stream = TextStream(tokenizer, ["The end"], no_stop_trim=True)
    for i in ids:
        assert not text_stream.add([i]).finished
    assert text_stream.text == "Sure: café 🎉 done. "  # "The en" may still become "The end"
    final = text_stream.finish()
    assert final.text == "The en" and final.stop is None
    assert text_stream.text == tokenizer.decode(ids)
