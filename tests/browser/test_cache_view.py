"""`/cache` in a real browser: it draws the live tree, updates while traffic runs, and
its numbers agree with `/get_server_info` and the snapshot.

Set RADIXLM_CACHE_VIEW_SCREENSHOT to a path to keep the screenshot (docs/cache-view.png
was taken this way).
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from browser.conftest import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}
SYSTEM = ("You are the support assistant of a serving engine. Answer in one short sentence, "
          "cite the documentation section when you can, and never invent a flag. ")  # fmt: skip
QUESTIONS = ["How do I flush the cache?", "What does lpm mean?", "Why is my hit rate low?",
             "Can two tenants share a prefix?", "How big is the pool?",
             "What is a salt?"]  # fmt: skip
SALT = "tenant-secret-salt"


def generate(url: str, text: str, salt: str | None = None) -> dict:
    body = {"text": text, "sampling_params": {"max_new_tokens": 4, "temperature": 0}}
    if salt is not None:
        body["cache_salt"] = salt
    r = httpx.post(f"{url}/generate", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def idle_info(url: str) -> dict:
    deadline = time.monotonic() + 30
    while True:
        info = httpx.get(f"{url}/get_server_info", headers=AUTH).json()
        if info["num_running_reqs"] == info["num_waiting_reqs"] == 0:
            return info
        assert time.monotonic() < deadline, "the server did not go idle"
        time.sleep(0.1)


def send_traffic(url: str) -> None:
    """Unique long prompts (they overflow the pool: evictions), a salted tenant, then the
    shared-prefix group: one request first so the prefix is cached, the rest at once."""
    for i in range(6):
        generate(url, f"Unrelated document number {i}: " + "lorem ipsum dolor " * 40)
    generate(url, "A tenant's own prompt about caching", salt=SALT)
    generate(url, "A tenant's own prompt about something else", salt=SALT)
    generate(url, SYSTEM + QUESTIONS[0])
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda q: generate(url, SYSTEM + q), QUESTIONS[1:]))


def drawn_rects(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#tree rect",
        "els => els.map(e => ({kind: e.dataset.kind, id: e.dataset.id, tokens: +e.dataset.tokens,"
        " size: +e.dataset.size, hits: +e.dataset.hits, label: e.dataset.label,"
        " width: e.getBoundingClientRect().width, parent: e.__data__.parent.data.id}))",
    )


def leaves_below(nodes: list[dict], top: str) -> list[dict]:
    """The drawn nodes without children whose chain of parents passes through `top`."""
    by_id = {r["id"]: r for r in nodes}
    parents = {r["parent"] for r in nodes}

    def under(r: dict) -> bool:
        while r["parent"] in by_id:
            if r["parent"] == top:
                return True
            r = by_id[r["parent"]]
        return False

    return [r for r in nodes if r["id"] not in parents and under(r)]


def test_cache_view_needs_the_key(keyed_server):
    for path in ("/cache", "/cache/snapshot", "/cache/static/cache.js"):
        assert httpx.get(f"{keyed_server}{path}").status_code == 401
    assert httpx.get(f"{keyed_server}/cache/static/nope.js", headers=AUTH).status_code == 404
    js = httpx.get(f"{keyed_server}/cache/static/d3-7.9.2.min.js", headers=AUTH)
    assert js.status_code == 200 and "d3js.org v7.9.2" in js.text[:100]


def test_snapshot_route_without_a_browser(keyed_server):
    generate(keyed_server, SYSTEM + QUESTIONS[0])
    generate(keyed_server, SYSTEM + QUESTIONS[1], salt=SALT)
    info = idle_info(keyed_server)
    r = httpx.get(f"{keyed_server}/cache/snapshot", headers=AUTH)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    snap = r.json()
    assert snap["tree_tokens"] == info["cached_tree_tokens"] > 0
    assert snap["stats"]["prompt_tokens"] == info["prompt_tokens"]
    assert snap["pool_tokens"] == 1024 and snap["history"][-1]["prompt_tokens"] > 0
    nodes = [n for n in snap["nodes"] if n["kind"] == "node"]
    assert len(nodes) == snap["tree_nodes"] and all("label_ids" not in n for n in nodes)
    assert sum(SYSTEM[:30] in n["label"] for n in nodes) == 2  # once per namespace
    assert SALT not in r.text


def test_cache_view_draws_the_live_tree(browser, keyed_server, tmp_path):
    url = keyed_server
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, extra_http_headers=AUTH)
    assert httpx.post(f"{url}/flush_cache", headers=AUTH).status_code == 200  # start empty
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{url}/cache")
    # Polls within a quarter second share one snapshot: wait for one taken after the flush.
    page.wait_for_function("window.cacheView.draws > 0 && !window.cacheView.snapshot.tree_nodes")
    assert page.eval_on_selector_all("#tree rect[data-kind=node]", "els => els.length") == 0
    assert "The cache is empty" in page.inner_text("#tree")

    send_traffic(url)  # while the page is open: it must catch up by itself
    info = idle_info(url)
    page.wait_for_function(
        f"window.cacheView.snapshot.stats.prompt_tokens === {info['prompt_tokens']}", timeout=15000
    )
    snap = page.evaluate("window.cacheView.snapshot")
    assert snap["tree_tokens"] == info["cached_tree_tokens"] > 0
    assert snap["evictions"]["total_nodes"] > 0, "the long prompts should have evicted"
    rects = drawn_rects(page)
    nodes = [r for r in rects if r["kind"] == "node"]
    # Every tree node drawn, and nothing else: the tree is far under the snapshot's cap.
    assert snap["merged_nodes"] == 0
    assert len(nodes) == snap["drawn_nodes"] == snap["tree_nodes"]
    assert sorted(r["id"] for r in nodes) == sorted(
        n["id"] for n in snap["nodes"] if n["kind"] == "node"
    )
    assert sum(r["tokens"] for r in nodes) == info["cached_tree_tokens"]

    # The shared system prompt is one node, reused by the 5 requests after the first, and
    # drawn as wide as its share of the tree: its subtree holds the 6 questions' leaves.
    shared = [r for r in nodes if SYSTEM[:30] in r["label"]]
    assert len(shared) == 1, [r["label"] for r in nodes]
    (node,) = shared
    assert node["hits"] >= len(QUESTIONS) - 1
    assert len(leaves_below(nodes, node["id"])) == len(QUESTIONS)
    (default,) = [r for r in rects if r["kind"] == "tenant" and r["label"] == "default"]
    share = node["size"] / default["size"]
    assert node["width"] == pytest.approx(default["width"] * share, rel=0.01)
    assert node["width"] > 100  # wide enough to read its label

    # Two namespaces; the salt is shown only as its hash, nowhere as itself.
    tenants = {r["label"] for r in rects if r["kind"] == "tenant"}
    assert tenants == {"default", next(t for t in tenants if t.startswith("salt:"))}
    assert SALT not in page.content()
    rows = page.eval_on_selector_all("#tenants tbody tr", "els => els.length")
    evicted = page.eval_on_selector_all("#evictions tbody tr", "els => els.length")
    assert rows == 2 and evicted > 0
    assert page.eval_on_selector_all("#hits rect.bar", "els => els.length") >= 1

    shot = tmp_path / "cache-view.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("RADIXLM_CACHE_VIEW_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
    assert not errors, errors
    ctx.close()
