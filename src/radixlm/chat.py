"""Terminal chat and one-shot generation on `radixlm.Engine`, streamed as it decodes.

A chat keeps the conversation as tokens: each turn's prompt is the previous
prompt, the ids the model generated, and the new messages' tokens, so the radix
cache serves every earlier turn (prompt and answer) and only the new message is
prefilled.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from radixlm.config import ChatConfig
from radixlm.engine.engine import Engine
from radixlm.loader import LoadedModel


def describe(loaded: LoadedModel) -> str:
    """One line naming the model, its architecture, dtype, device and weight memory."""
    c = loaded.config
    return (
        f"{loaded.path.name}: {c.architecture}, {c.num_layers} layers, hidden {c.hidden_size}, "
        f"{str(loaded.dtype).removeprefix('torch.')} on {loaded.device}, "
        f"{loaded.memory_bytes / 2**20:.1f} MiB of weights, context {c.context_length}"
    )


class ChatSession:
    """One conversation on `engine`: `say(text)` streams the reply's chunks.

    `history` holds the ids of the conversation so far (the last prompt and the
    ids generated for it); `messages` the same as chat messages. With `raw`, the
    text is sent as is, without the chat template, and nothing is remembered.
    """

    def __init__(self, engine: Engine, cfg: ChatConfig) -> None:
        self.engine, self.cfg = engine, cfg
        self.tok = engine.tokenizer
        self.messages: list[dict[str, str]] = []
        if cfg.system:
            self.messages.append({"role": "system", "content": cfg.system})
        self.history: list[int] = []
        self.history_text = ""  # what `history` reads as (special tokens kept)

    def prompt_ids(self, text: str) -> list[int]:
        """The ids of the next turn's prompt, after the user says `text`."""
        if self.cfg.raw:
            return self.tok.encode(text)
        self.messages.append({"role": "user", "content": text})
        full = self.tok.render_chat(self.messages, add_generation_prompt=True)
        if self.history and full.startswith(self.history_text):
            # The template left the conversation so far unchanged: reuse its ids.
            rest = full[len(self.history_text) :]
            return self.history + self.tok.encode(rest, add_special_tokens=False)
        return self.tok.apply_chat_template(self.messages, add_generation_prompt=True)

    def say(self, text: str) -> Iterator[dict[str, Any]]:
        """Stream the reply to `text` (the Engine's chunks); remember the turn at the end."""
        ids = self.prompt_ids(text)
        reply: list[int] = []  # every id generated, the end-of-turn token included
        reply_text = ""
        for chunk in self.engine.generate_stream(input_ids=ids, sampling_params=self.cfg.params):
            reply += chunk["output_ids"]
            reply_text = chunk["text"]
            yield chunk
        if self.cfg.raw:
            return
        self.messages.append({"role": "assistant", "content": reply_text})
        self.history = ids + reply
        self.history_text = self.tok.decode_raw(self.history)


def answer(session: ChatSession, text: str, out: TextIO) -> dict[str, Any]:
    """Stream the reply to `text` onto `out`, a summary line onto stderr; return the meta."""
    start = time.perf_counter()
    meta: dict[str, Any] = {}
    for chunk in session.say(text):
        out.write(chunk["text_delta"])
        out.flush()
        meta = chunk["meta_info"]
    out.write("\n")
    seconds = time.perf_counter() - start
    print(
        f"[{meta.get('prompt_tokens', 0)} prompt tokens, {meta.get('cached_tokens', 0)} cached, "
        f"{meta.get('completion_tokens', 0)} generated in {seconds:.2f}s]",
        file=sys.stderr,
    )
    return meta


def run_chat(cfg: ChatConfig) -> int:
    """One-shot when `cfg.prompt` is set; otherwise read user turns from stdin until EOF."""
    with Engine(**cfg.engine_options()) as engine:
        print(describe(engine.loaded), file=sys.stderr)
        session = ChatSession(engine, cfg)
        if cfg.prompt is not None:
            answer(session, cfg.prompt, sys.stdout)
            return 0
        print("Type a message and press Enter; Ctrl-D to quit.", file=sys.stderr)
        while True:
            try:
                text = input("> " if sys.stdin.isatty() else "")
            except (EOFError, KeyboardInterrupt):
                print(file=sys.stderr)
                return 0
            if text.strip():
                answer(session, text, sys.stdout)
