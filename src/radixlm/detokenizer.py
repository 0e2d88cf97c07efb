"""Streaming text out of generated ids: the incremental detokenizer and stop strings.

`IncrementalDetokenizer` turns ids, fed as they are generated, into text deltas whose
concatenation is the decoded whole, without ever re-decoding the whole and without sending
half of a multi-byte character. `StopStringMatcher` cuts those deltas at the first stop
string, holding back any tail that could still grow into one, so a client never receives
text that is later taken back. `TextStream` chains the two for one request.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from radixlm.tokenizer import Tokenizer

# What decoding an incomplete UTF-8 sequence produces.
REPLACEMENT_CHAR = "\ufffd"
# How many prompt ids precede the first generated one in the decode window, so that its
# leading space (SentencePiece `▁`) decodes as it would inside the whole text.
PROMPT_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    """Decodes a growing id sequence into text deltas, O(new ids) per step.

    Each step decodes only a window: the ids already emitted in the previous step (the
    "prefix", for context: a SentencePiece word marker or a byte-level space decodes
    differently at the start of a text) and the ids not yet emitted. The delta is the
    window's text past the prefix's text. While the window's text ends with U+FFFD (a
    character whose bytes have not all arrived) nothing is emitted and the window grows.

    With `skip_special_tokens`, the tokenizer's special ids are dropped as they arrive, so
    the concatenation of every `add` and the final `flush` equals
    `tokenizer.decode(all_ids, skip_special_tokens)`. `prompt_ids` (optional) gives the ids
    before the first fed one: their last few serve as context and are never emitted, so the
    first generated word keeps its leading space.

    One exception to the equality: with byte-fallback tokenizers (`<0xE4>` tokens) a run of
    byte tokens that is not valid UTF-8 decodes, as a whole, to U+FFFD for every byte of the
    run, valid characters in it included; streamed, the characters completed before the
    invalid byte have already been sent as themselves. Valid text is always exact.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        skip_special_tokens: bool = True,
        prompt_ids: Sequence[int] = (),
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._skipped: frozenset[int] = (
            frozenset(tokenizer.special_token_ids) if skip_special_tokens else frozenset()
        )
        context = [i for i in prompt_ids[-4 * PROMPT_CONTEXT_TOKENS :] if i not in self._skipped]
        self._ids: list[int] = context[-PROMPT_CONTEXT_TOKENS:]
        self._prefix_offset = 0  # the window starts here
        self._read_offset = len(self._ids)  # ids before this are emitted
        self._prefix_text = self._decode(0, self._read_offset)

    @property
    def pending_ids(self) -> int:
        """How many fed ids are not yet part of the emitted text (waiting for more bytes)."""
        return len(self._ids) - self._read_offset

    def add(self, ids: Iterable[int]) -> str:
        """Feed newly generated ids; return the text they complete ("" when none yet)."""
        before = len(self._ids)
        self._ids.extend(i for i in ids if i not in self._skipped)
        if len(self._ids) == before:
            return ""
        text = self._decode(self._prefix_offset, len(self._ids))
        if len(text) <= len(self._prefix_text) or text.endswith(REPLACEMENT_CHAR):
            return ""
        return self._advance(text)

    def flush(self) -> str:
        """Return whatever is held back, incomplete characters included (as U+FFFD).

        Call it once the sequence has ended; afterwards the concatenation of all deltas is
        the full decode.
        """
        if self._read_offset == len(self._ids):
            return ""
        return self._advance(self._decode(self._prefix_offset, len(self._ids)))

    def _advance(self, window_text: str) -> str:
        """Emit the window's text past the prefix and make the emitted ids the next prefix."""
        delta = window_text[len(self._prefix_text) :]
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        self._prefix_text = self._decode(self._prefix_offset, self._read_offset)
        return delta

    def _decode(self, start: int, stop: int) -> str:
        """The text of ids[start:stop], special ids already filtered out."""
        if start == stop:
            return ""
        return self.tokenizer.decode_raw(self._ids[start:stop])


@dataclass(frozen=True)
class StopMatch:
    """One step of stop-string matching.

    `text` is what may be sent to the client now; `stop` is the stop string that matched
    (generation is over and later text is dropped), or None while none has.
    """

    text: str
    stop: str | None = None

    @property
    def finished(self) -> bool:
        """True once a stop string has matched."""
        return self.stop is not None


class StopStringMatcher:
    """Finds the first stop string in streamed text, even when it spans several deltas.

    The first match is the one that ends earliest (where generation would have stopped);
    among those ending at the same place, the longest. The emitted text ends just before it,
    or just after it with `no_stop_trim`. While no stop has matched, the longest tail that
    is the beginning of some stop string is held back and released as soon as it cannot be
    one any more, or by `flush` at the end.
    """

    def __init__(self, stop: Iterable[str] = (), no_stop_trim: bool = False) -> None:
        self.stop_strings: tuple[str, ...] = tuple(dict.fromkeys(s for s in stop if s))
        self.no_stop_trim = no_stop_trim
        self.matched: str | None = None
        self._held = ""
        self._max_len = max((len(s) for s in self.stop_strings), default=0)
        self._first_chars = frozenset(s[0] for s in self.stop_strings)

    @property
    def held_back(self) -> str:
        """The text received but not yet released, because a stop string may begin in it."""
        return self._held

    def feed(self, delta: str) -> StopMatch:
        """Take the next piece of text; return what to send now and the stop string, if any.

        After a match every call returns empty text and the same stop string.
        """
        if self.matched is not None:
            return StopMatch("", self.matched)
        text = self._held + delta
        found = self._first_match(text)
        if found is not None:
            start, stop = found
            self.matched, self._held = stop, ""
            end = start + len(stop) if self.no_stop_trim else start
            return StopMatch(text[:end], stop)
        keep = self._partial_tail_len(text)
        self._held = text[len(text) - keep :] if keep else ""
        return StopMatch(text[: len(text) - keep])

    def flush(self) -> str:
        """Release the held-back text (the sequence ended without completing a stop string)."""
        held, self._held = self._held, ""
        return "" if self.matched is not None else held

    def _first_match(self, text: str) -> tuple[int, str] | None:
        """(start, stop string) of the match that ends first, longest on a tie; None if none."""
        best: tuple[int, int, str] | None = None  # (end, start, stop)
        for stop in self.stop_strings:
            start = text.find(stop)
            if start < 0:
                continue
            candidate = (start + len(stop), start, stop)
            if best is None or candidate[:2] < best[:2]:
                best = candidate
        return None if best is None else (best[1], best[2])

    def _partial_tail_len(self, text: str) -> int:
        """The length of the longest tail of `text` that a stop string starts with (not whole)."""
        for k in range(min(len(text), self._max_len - 1), 0, -1):
            if text[-k] not in self._first_chars:
                continue
            tail = text[-k:]
            if any(len(s) > k and s.startswith(tail) for s in self.stop_strings):
                return k
        return 0


def truncate_at_stop(
    text: str, stop: Iterable[str], no_stop_trim: bool = False
) -> tuple[str, str | None]:
    """Cut a whole (non-streamed) `text` at its first stop string.

    Returns (the text to send, the stop string that matched or None).
    """
    matcher = StopStringMatcher(stop, no_stop_trim)
    step = matcher.feed(text)
    return (step.text, step.stop) if step.finished else (step.text + matcher.flush(), None)


class TextStream:
    """The text of one generated sequence, streamed: detokenize, then cut at stop strings."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        stop: Iterable[str] = (),
        *,
        skip_special_tokens: bool = True,
        no_stop_trim: bool = False,
        prompt_ids: Sequence[int] = (),
    ) -> None:
        self.detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens, prompt_ids)
        self.matcher = StopStringMatcher(stop, no_stop_trim)
        self.text = ""  # everything sent so far

    @property
    def stop(self) -> str | None:
        """The stop string that ended the text, or None."""
        return self.matcher.matched

    def add(self, ids: Iterable[int]) -> StopMatch:
        """Feed new ids; return the text to send now and the stop string if one matched."""
        return self._record(self.matcher.feed(self.detokenizer.add(ids)))

    def finish(self) -> StopMatch:
        """End the sequence; return the remaining text (held bytes and held-back tail)."""
        step = self.matcher.feed(self.detokenizer.flush())
        if not step.finished:
            step = StopMatch(step.text + self.matcher.flush())
        return self._record(step)

    def _record(self, step: StopMatch) -> StopMatch:
        """Append `step.text` to the sent text and return `step`."""
        self.text += step.text
        return step
