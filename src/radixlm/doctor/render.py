"""The doctor's report as plain text, or as one self-contained HTML page with plots.

Both read the dict `report.diagnose` returns. Plots are PNGs drawn by matplotlib
and embedded as data URIs, so the page needs nothing else.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

MAX_ROWS = 8


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _short(text: str | None, n: int = 60) -> str:
    if text is None:
        return "-"
    text = text.replace("\n", "\\n")
    return text if len(text) <= n else text[: n - 3] + "..."


def text_report(rep: dict[str, Any]) -> str:
    """The report as plain text, section by section."""
    t = rep["trace"]
    out = [f"radixlm doctor: {t['requests']} requests, {t['prompt_tokens']} prompt tokens, "
           f"pool {t['pool_tokens']} tokens, policy {t['policy']}"
           + (f" (page hashes of {t['page_size']} tokens: no text)" if t["hashed"] else "")]
    out += ["", "Hit rates", *_hit_lines(rep["hit_rates"])]
    out += ["", "Divergence points (where mostly identical prompts first differ)"]
    out += _span_lines(rep["divergence"]) or ["  none"]
    out += ["", "Dynamic content (spans that differ inside otherwise identical prompts)"]
    out += _span_lines(rep["dynamic"]) or ["  none"]
    out += ["", "Order (the same long parts in different orders)", *_order_lines(rep["order"])]
    out += ["", "Capacity (reuse distance: tokens computed since a prefix was last used)"]
    out += _capacity_lines(rep["capacity"])
    out += ["", "Tenants (salts shown as hashes)", *_tenant_lines(rep)]
    out += ["", "Advice (each number is a replay of this trace, rewritten as advised)"]
    out += [f"  - {a['text']}" for a in rep["advice"]] or ["  nothing to change"]
    return "\n".join(out) + "\n"


def _hit_lines(h: dict[str, Any]) -> list[str]:
    return [f"  measured            {_pct(h['measured'])}",
            f"  replay              {_pct(h['replay'])}  (the server's pool and policy)",
            f"  best at this pool   {_pct(h['best_at_pool'])}  (policy {h['best_policy']})",
            f"  oracle              {_pct(h['oracle'])}  (unlimited memory)"]  # fmt: skip


def _order_lines(o: dict[str, Any]) -> list[str]:
    if not o["swapped"]:
        return ["  no shared parts seen in different orders"]
    out = [f"  {o['scrambled_prompts']} prompts hold shared parts out of the order "
           f"{', '.join(o['canonical_order'])}:"]
    for p in o["parts"][:MAX_ROWS]:
        out.append(f"    {p['name']}: {p['length']} tokens in {p['prompts']} prompts, "
                   f"starts {_short(p['head'], 40)!r}")
    for s in o["swapped"][:MAX_ROWS]:
        out.append(f"    {s['a']} before {s['b']} in {s['a_first']} prompts, after it in "
                   f"{s['b_first']}")
    return out


def _capacity_lines(c: dict[str, Any]) -> list[str]:
    r = c["reuse"]
    curve = ", ".join(f"{p['cache_tokens']}: {_pct(p['hit_rate'])}" for p in c["curve"])
    return [f"  reusable tokens {r['reusable_tokens']}; within the pool ({c['pool_tokens']}): "
            f"{_pct(r['share_within_pool'])}; a pool of {r['pool_for_90']} tokens covers 90%, "
            f"{r['pool_for_99']} covers 99%",
            f"  replayed hit rate by cache size: {curve}"]  # fmt: skip


def _tenant_lines(rep: dict[str, Any]) -> list[str]:
    out = []
    for row in rep["tenants"][:MAX_ROWS]:
        out.append(f"  {row['tenant']}: {row['requests']} requests, measured "
                   f"{_pct(row['measured'])}, replay {_pct(row['replay'])}, its prefixes evicted "
                   f"by others {row['evicted_by_others']} tokens, it evicted others' "
                   f"{row['evicted_others']}")
    cross = [e for e in rep["evictions"] if e["by"] is not None and e["by"] != e["victim"]]
    for e in cross[:MAX_ROWS]:
        out.append(f"    {e['by']} evicted {e['tokens']} tokens of {e['victim']}")
    return out


def _span_lines(groups: list[dict[str, Any]]) -> list[str]:
    lines = []
    for g in groups[:MAX_ROWS]:
        ex = g["examples"][0] if g["examples"] else ("-", "-")
        lines.append(f"  position {g['position']}: looks like {g['kind']}; {g['requests']} "
                     f"requests, {g['tokens']} tokens after it not reused")
        lines.append(f"    after {_short(g['before'], 30)!r}: {_short(ex[0])!r} "
                     f"vs {_short(ex[1])!r}")
    return lines


# -- HTML ------------------------------------------------------------------------------


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def plots(rep: dict[str, Any]) -> dict[str, str]:
    """PNG data URIs: hit rate by cache size, and the hit rates before and after advice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    c = rep["capacity"]
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    xs = [p["cache_tokens"] for p in c["curve"]]
    ax.plot(xs, [100 * p["hit_rate"] for p in c["curve"]], marker="o", label="replay")
    ax.axhline(100 * rep["hit_rates"]["oracle"], color="gray", ls="--", label="oracle")
    ax.axvline(c["pool_tokens"], color="red", ls=":", label="pool")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="cache size (tokens)", ylabel="hit rate (%)", ylim=(0, 100))
    ax.legend()
    out["curve"] = _png(fig)
    plt.close(fig)
    h = rep["hit_rates"]
    bars = [("measured", h["measured"]), ("best at pool", h["best_at_pool"]),
            ("oracle", h["oracle"])] + [(a["kind"], a["after"]) for a in rep["advice"]]
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.bar([b[0] for b in bars], [100 * b[1] for b in bars], color="steelblue")
    ax.set(ylabel="hit rate (%)", ylim=(0, 100))
    out["bars"] = _png(fig)
    plt.close(fig)
    return out


def html_report(rep: dict[str, Any]) -> str:
    """The report as one HTML page: the text report, the plots, and each section's table."""
    imgs = plots(rep)
    esc = html.escape
    rows = "".join(f"<tr><td>{g['position']}</td><td>{esc(g['kind'])}</td><td>{g['requests']}"
                   f"</td><td>{g['tokens']}</td><td><code>{esc(_short(g['before'], 40))}</code>"
                   f"</td><td><code>{esc(' | '.join(g['examples'][0]) if g['examples'] else '')}"
                   "</code></td></tr>" for g in rep["dynamic"])  # fmt: skip
    advice = "".join(f"<li>{esc(a['text'])}</li>" for a in rep["advice"]) or "<li>none</li>"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>radixlm doctor</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2em .5em}}
pre{{background:#f6f6f6;padding:1em;overflow-x:auto}}</style></head><body>
<h1>radixlm doctor</h1>
<h2>Advice</h2><ul>{advice}</ul>
<h2>Hit rates</h2><img alt="hit rates" src="{imgs['bars']}">
<h2>Hit rate by cache size</h2><img alt="hit rate by cache size" src="{imgs['curve']}">
<h2>Dynamic content</h2><table><tr><th>position</th><th>kind</th><th>requests</th>
<th>tokens lost</th><th>before</th><th>this | partner</th></tr>{rows}</table>
<h2>Full report</h2><pre>{esc(text_report(rep))}</pre>
</body></html>
"""
