"""Tokenizer and chat template: a thin wrapper around a `transformers` tokenizer.

`load_tokenizer` reads a Hugging Face model directory (`tokenizer.json`,
`tokenizer_config.json`, a chat template in the config or in `chat_template.jinja`) or a
`.gguf` file (tokenizer and chat template embedded), offline. `Tokenizer` gives the engine
what it needs: encode, decode, the chat template rendered to ids, and the token ids that end
a generation. Streaming text and stop strings live in `radixlm.detokenizer`.

Decoding never applies `clean_up_tokenization_spaces`: that clean-up rewrites text across
token boundaries, so a streamed text could not equal the decoded whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Tokens that end an assistant turn in common chat formats (ChatML, Llama-3, Phi-3, Gemma).
# When the chat template writes one of them and the vocabulary has it as a single token, the
# model emits it at the end of a reply, so it must stop generation like eos does.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


class ChatTemplateError(ValueError):
    """The tokenizer has no chat template, so chat messages cannot be turned into a prompt."""


class Tokenizer:
    """A `transformers` tokenizer with the engine's view of it.

    `extra_eos_token_ids` adds stop ids beyond the tokenizer's own eos (for instance those a
    model's `generation_config.json` lists).
    """

    def __init__(self, hf_tokenizer: Any, extra_eos_token_ids: Iterable[int] = ()) -> None:
        self.hf_tokenizer = hf_tokenizer
        # The Rust tokenizer when there is one: decoding through it skips Python overhead.
        self._backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        self._vocab_size = len(hf_tokenizer)
        self.special_token_ids: frozenset[int] = frozenset(_special_token_ids(hf_tokenizer))
        self._eos_token_ids = self._collect_eos_ids(extra_eos_token_ids)

    # --- properties -------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """The number of token ids, added tokens included."""
        return self._vocab_size

    @property
    def bos_token_id(self) -> int | None:
        """The beginning-of-sequence id, or None when the tokenizer has none."""
        return self.hf_tokenizer.bos_token_id

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every id that ends a generation: eos first, then extra and end-of-turn ids."""
        return self._eos_token_ids

    @property
    def chat_template(self) -> str | None:
        """The default chat template (Jinja source), or None when the model has none."""
        template = getattr(self.hf_tokenizer, "chat_template", None)
        if isinstance(template, dict):  # several named templates: the default one
            template = template.get("default")
        return template or None

    @property
    def supports_tools(self) -> bool:
        """Whether the chat template renders `tools=` (it reads a `tools` variable)."""
        return bool(re.search(r"\btools\b", self.chat_template or ""))

    # --- text <-> ids -----------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """The ids of `text`; with `add_special_tokens`, plus the tokens the model adds (bos)."""
        return list(self.hf_tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of `ids`; special tokens (bos, eos, ChatML markers) left out when asked."""
        if skip_special_tokens:
            special = self.special_token_ids
            ids = [i for i in ids if i not in special]
        return self.decode_raw(ids)

    def decode_raw(self, ids: Sequence[int]) -> str:
        """The text of `ids` with every token kept and no clean-up of spaces."""
        if self._backend is not None:
            return self._backend.decode(list(ids), skip_special_tokens=False)
        return self.hf_tokenizer.decode(
            list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    # --- chat -------------------------------------------------------------------------

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        **template_kwargs: Any,
    ) -> str:
        """The prompt text the chat template makes of `messages`.

        `template_kwargs` reach the template (`tools`, `documents`, ...). Raises
        ChatTemplateError when the tokenizer has no chat template.
        """
        if self.chat_template is None:
            raise ChatTemplateError(
                "this model's tokenizer has no chat template, so chat messages cannot be "
                "turned into a prompt; send a plain text prompt (completions) instead"
            )
        text = self.hf_tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=False,
            **template_kwargs,
        )  # fmt: skip
        if not isinstance(text, str):  # some versions wrap a single rendering in a list
            text = text[0]
        return text

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        **template_kwargs: Any,
    ) -> list[int]:
        """The prompt ids of `messages`: `render_chat` encoded without adding special tokens.

        The template writes bos itself when the model wants one. Raises ChatTemplateError
        when the tokenizer has no chat template.
        """
        text = self.render_chat(messages, add_generation_prompt, **template_kwargs)
        return self.encode(text, add_special_tokens=False)

    # --- internals --------------------------------------------------------------------

    def _collect_eos_ids(self, extra: Iterable[int]) -> tuple[int, ...]:
        """eos, then `extra`, then end-of-turn tokens the chat template writes; no repeats."""
        ids: list[int] = []
        eos = self.hf_tokenizer.eos_token_id
        if eos is not None:
            ids.append(int(eos))
        ids.extend(int(i) for i in extra)
        template = self.chat_template or ""
        for token in END_OF_TURN_TOKENS:
            if token in template:
                token_id = self._single_token_id(token)
                if token_id is not None:
                    ids.append(token_id)
        return tuple(dict.fromkeys(ids))

    def _single_token_id(self, token: str) -> int | None:
        """The id of `token` when the vocabulary has it as one token, else None."""
        token_id = self.hf_tokenizer.convert_tokens_to_ids(token)
        unk = self.hf_tokenizer.unk_token_id
        if not isinstance(token_id, int) or (
            token_id == unk and token != self.hf_tokenizer.unk_token
        ):
            return None
        return token_id

    def __repr__(self) -> str:
        return (
            f"Tokenizer({type(self.hf_tokenizer).__name__}, vocab_size={self.vocab_size}, "
            f"bos={self.bos_token_id}, eos={self.eos_token_ids})"
        )


def _special_token_ids(hf_tokenizer: Any) -> set[int]:
    """The ids that `skip_special_tokens` leaves out: the named specials and special added ones."""
    ids = {int(i) for i in getattr(hf_tokenizer, "all_special_ids", ()) if i is not None}
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is not None:
        added = backend.get_added_tokens_decoder()
        ids.update(int(i) for i, token in added.items() if token.special)
    return ids


def load_tokenizer(path: Path | str, extra_eos_token_ids: Iterable[int] = ()) -> Tokenizer:
    """Load the tokenizer of a HF model directory or a `.gguf` file, without the network.

    For a directory, the ids in `generation_config.json`'s `eos_token_id` count as eos too,
    besides `extra_eos_token_ids`. Raises FileNotFoundError when `path` is neither.
    """
    from transformers import AutoTokenizer

    path = Path(path).expanduser()
    extra = list(extra_eos_token_ids)
    if path.is_file() and path.suffix == ".gguf":
        hf = _gguf_tokenizer(path)
    elif path.is_dir():
        hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        extra.extend(_generation_config_eos_ids(path))
    else:
        raise FileNotFoundError(
            f"no tokenizer at {path}: expected a model directory or a .gguf file"
        )
    return Tokenizer(hf, extra)


def _tokenizer_cache_dir(gguf_path: Path) -> Path | None:
    """Where the converted tokenizer of `gguf_path` is kept; None when caching is off.

    Building a tokenizer from a GGUF file parses its whole vocabulary (seconds);
    the converted tokenizer is saved once under `$RADIXLM_CACHE_DIR` (default
    `$XDG_CACHE_HOME/radixlm`, else `~/.cache/radixlm`; an empty value turns
    caching off), keyed by the file's path, size and mtime and the transformers
    version, so a changed file or library gets a fresh conversion.
    """
    import transformers

    root = os.environ.get("RADIXLM_CACHE_DIR")
    if root == "":
        return None
    if root is None:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(xdg) / "radixlm")
    st = gguf_path.stat()
    ident = f"{gguf_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{transformers.__version__}"
    key = hashlib.sha1(ident.encode()).hexdigest()[:16]
    return Path(root) / "tokenizers" / f"{gguf_path.stem}-{key}"


def _gguf_tokenizer(path: Path) -> Any:
    """transformers' tokenizer for a GGUF file, converted once and then read from the cache."""
    from transformers import AutoTokenizer

    cache = _tokenizer_cache_dir(path)
    if cache is not None and (cache / "tokenizer_config.json").is_file():
        try:
            return AutoTokenizer.from_pretrained(str(cache), local_files_only=True)
        except (OSError, ValueError) as e:  # a damaged entry: convert again
            log.warning("ignoring tokenizer cache %s: %s", cache, e)
    hf = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    if cache is None or not _save_atomically(hf, cache):
        return hf
    # Read back what was saved: the first run then has the same tokenizer as later ones,
    # and its `name_or_path` is a folder other clients can load (see /model_info).
    return AutoTokenizer.from_pretrained(str(cache), local_files_only=True)


def _save_atomically(hf: Any, target: Path) -> bool:
    """Save tokenizer `hf` as directory `target` (temp dir + rename); failures only warn.

    The rename is atomic, so a concurrent loader sees a whole entry or none;
    when another process renamed first, its entry stays. Returns whether `target`
    now holds an entry.
    """
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
        hf.save_pretrained(str(tmp))
        os.replace(tmp, target)
    except OSError as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if not target.is_dir():
            log.warning("could not cache the tokenizer in %s: %s", target, e)
            return False
    return True


def _generation_config_eos_ids(model_dir: Path) -> list[int]:
    """The `eos_token_id` entry (int or list) of `generation_config.json`, or [] without one."""
    gen_path = model_dir / "generation_config.json"
    if not gen_path.is_file():
        return []
    eos = json.loads(gen_path.read_text()).get("eos_token_id")
    if eos is None:
        return []
    return [int(i) for i in eos] if isinstance(eos, list) else [int(eos)]
