"""Terminal chat and one-shot generation on one model, streamed as it decodes."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from radixlm.generation import generate_tokens
from radixlm.loader import LoadedModel, load_model
from radixlm.server.args import ChatConfig
from radixlm.tokenizer import Tokenizer, load_tokenizer


def describe(loaded: LoadedModel) -> str:
    """One line naming the model, its architecture, dtype, device and weight memory."""
    c = loaded.config
    return (
        f"{loaded.path.name}: {c.architecture}, {c.num_layers} layers, hidden {c.hidden_size}, "
        f"{str(loaded.dtype).removeprefix('torch.')} on {loaded.device}, "
        f"{loaded.memory_bytes / 2**20:.1f} MiB of weights, context {c.context_length}"
    )


def answer(
    loaded: LoadedModel, tok: Tokenizer, cfg: ChatConfig, prompt_ids: list[int], out: TextIO
) -> list[int]:
    """Stream the reply to `prompt_ids` onto `out`; return its ids (stop token dropped)."""
    eos = tok.eos_token_ids + loaded.config.eos_token_ids
    detok = tok.detokenizer(prompt_ids=prompt_ids)
    ids: list[int] = []
    start = time.perf_counter()
    for token in generate_tokens(loaded.model, prompt_ids, cfg.params, eos):
        if token in eos:
            break
        ids.append(token)
        out.write(detok.add([token]))
        out.flush()
    out.write(detok.flush() + "\n")
    seconds = time.perf_counter() - start
    print(
        f"[{len(prompt_ids)} prompt tokens, {len(ids)} generated in {seconds:.2f}s]",
        file=sys.stderr,
    )
    return ids


def run_chat(cfg: ChatConfig) -> int:
    """One-shot when `cfg.prompt` is set; otherwise read user turns from stdin until EOF."""
    loaded = load_model(cfg.load)
    tok = load_tokenizer(loaded.path)
    print(describe(loaded), file=sys.stderr)
    messages: list[dict[str, str]] = []
    if cfg.system:
        messages.append({"role": "system", "content": cfg.system})
    interactive = cfg.prompt is None
    if interactive:
        print("Type a message and press Enter; Ctrl-D to quit.", file=sys.stderr)
    while True:
        if cfg.prompt is not None:
            text = cfg.prompt
        else:
            try:
                text = input("> " if sys.stdin.isatty() else "")
            except (EOFError, KeyboardInterrupt):
                print(file=sys.stderr)
                return 0
            if not text.strip():
                continue
        if cfg.raw:
            prompt_ids = tok.encode(text)
        else:
            messages.append({"role": "user", "content": text})
            prompt_ids = tok.apply_chat_template(messages, add_generation_prompt=True)
        reply = answer(loaded, tok, cfg, prompt_ids, sys.stdout)
        if not interactive:
            return 0
        if not cfg.raw:
            messages.append({"role": "assistant", "content": tok.decode(reply)})
