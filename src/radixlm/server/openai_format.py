"""SGLang-shaped results -> OpenAI's fields: finish_reason, usage, logprobs."""

from __future__ import annotations

from typing import Any


def finish_reason(meta: dict[str, Any]) -> str | None:
    """ "stop", "length", "abort", or None while the request runs."""
    reason = meta.get("finish_reason")
    return None if reason is None else reason["type"]


def usage(results: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """OpenAI usage over `results` (n consecutive samples per prompt; prompts counted once).

    `prompt_tokens_details.cached_tokens` counts prompt tokens served from the prefix cache.
    """
    metas = [r["meta_info"] for r in results]
    firsts = metas[::n] if n > 0 else metas
    prompt = sum(m["prompt_tokens"] for m in firsts)
    completion = sum(m["completion_tokens"] for m in metas)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": sum(m["cached_tokens"] for m in firsts)},
    }


def _tops(meta: dict[str, Any]) -> list[list[list[Any]]]:
    entries = meta.get("output_token_logprobs") or []
    tops = meta.get("output_top_logprobs") or []
    return [(tops[i] if i < len(tops) and tops[i] else []) for i in range(len(entries))]


def echo_logprobs(meta: dict[str, Any]) -> dict[str, Any]:
    """`meta` with the prompt's logprob entries before the output's (for `echo`); the first
    prompt token has no logprob (None)."""
    inputs = meta.get("input_token_logprobs") or []
    tops = meta.get("input_top_logprobs") or []
    tops = [(tops[i] if i < len(tops) else None) for i in range(len(inputs))]
    out_tops = meta.get("output_top_logprobs") or []
    out = meta.get("output_token_logprobs") or []
    out_tops = [(out_tops[i] if i < len(out_tops) else None) for i in range(len(out))]
    return {**meta, "output_token_logprobs": [*inputs, *out],
            "output_top_logprobs": [*tops, *out_tops]}  # fmt: skip


def completion_logprobs(meta: dict[str, Any]) -> dict[str, Any]:
    """The legacy completions `logprobs` object: tokens, token_logprobs, top_logprobs, offsets."""
    entries = meta.get("output_token_logprobs") or []
    tokens = [e[2] or "" for e in entries]
    offsets, pos = [], 0
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": [e[0] for e in entries],
        "top_logprobs": [{(t[2] or ""): t[0] for t in top} for top in _tops(meta)],
        "text_offset": offsets,
    }


def _token(text: str | None, logprob: float) -> dict[str, Any]:
    text = text or ""
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(meta: dict[str, Any]) -> dict[str, Any]:
    """The chat `logprobs` object: `{"content": [{token, logprob, bytes, top_logprobs}]}`."""
    entries = meta.get("output_token_logprobs") or []
    content = [
        {**_token(e[2], e[0]), "top_logprobs": [_token(t[2], t[0]) for t in top]}
        for e, top in zip(entries, _tops(meta), strict=True)
    ]
    return {"content": content}
