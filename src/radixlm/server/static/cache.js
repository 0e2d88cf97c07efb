// The live cache view: polls /cache/snapshot and draws the radix tree as an icicle
// (width = tokens), the hit rate over time, namespaces and recent evictions.
// Every prompt-derived string is set with textContent / d3 .text(), never as HTML.
"use strict";

const POLL_MS = 1000;
const ROW_PX = 24; // height of one tree level
const view = (window.cacheView = { snapshot: null, draws: 0, drawn: null, paused: false });

const fmt = d3.format(",");
const pct = (x) => (x == null ? "–" : `${(100 * x).toFixed(1)}%`);
const ago = (s) => (s == null ? "long ago" : s < 1 ? "just now" : `${d3.format(".2~s")(s)}s ago`);
const shown = (text) => (text || "").replace(/\n/g, "⏎");

function setText(id, text) {
  document.getElementById(id).textContent = text;
}

function drawSummary(snap) {
  const st = snap.stats;
  setText("s-tokens", `${fmt(snap.tree_tokens)} of ${fmt(snap.pool_tokens)}`);
  const merged = snap.merged_nodes ? ` (${fmt(snap.merged_nodes)} merged)` : "";
  setText("s-nodes", `${fmt(snap.tree_nodes)}${merged}`);
  setText("s-hit", pct(st.cache_hit_rate));
  const requests = d3.sum(snap.namespaces, (n) => n.requests || 0);
  setText("s-requests", fmt(requests));
  setText("s-running", `${st.num_running_reqs} / ${st.num_waiting_reqs}`);
  const ev = snap.evictions;
  setText("s-evicted", `${fmt(ev.total_tokens)} tokens in ${fmt(ev.total_nodes)} nodes`);
}

function ownTokens(d) {
  return d.kind === "node" || d.kind === "merged" ? d.tokens : 0;
}

function describe(d) {
  if (d.kind === "tenant") return `namespace ${d.tenant}: ${fmt(d.size)} tokens`;
  if (d.kind === "merged")
    return `${fmt(d.merged)} smaller nodes merged: ${fmt(d.tokens)} tokens, up to ${d.hits} hits`;
  return (
    `${fmt(d.tokens)} tokens (subtree ${fmt(d.size)}) · ${d.hits} hits · last used ` +
    `${ago(d.age_s)}${d.locked ? " · in use" : ""} · ${d.tenant}\n${d.label}` +
    `${d.tokens > 24 ? " …" : ""}`
  );
}

function drawTree(snap) {
  const box = document.getElementById("tree");
  const width = Math.max(320, box.clientWidth);
  if (!snap.tree_tokens) {
    box.replaceChildren();
    const p = box.appendChild(document.createElement("p"));
    p.textContent = "The cache is empty: send some requests.";
    view.drawn = { nodes: 0, merged: 0, tenants: 0, tokens: 0 };
    return;
  }
  box.querySelectorAll("p").forEach((p) => p.remove());
  const root = d3
    .stratify()
    .id((d) => d.id)
    .parentId((d) => d.parent)(snap.nodes)
    .sum((d) => ownTokens(d))
    .sort((a, b) => b.value - a.value);
  d3.partition().size([width, root.height + 1])(root);
  const shownNodes = root.descendants().filter((n) => n.depth > 0);
  const ticks = shownNodes.filter((n) => n.data.kind === "node").map((n) => n.data.last_access);
  const [lo, hi] = d3.extent(ticks.length ? ticks : [0, 1]);
  const colour = (t) => d3.interpolateOranges(0.12 + 0.55 * (hi > lo ? (t - lo) / (hi - lo) : 1));

  const svg = d3
    .select(box)
    .selectAll("svg")
    .data([null])
    .join("svg")
    .attr("height", root.height * ROW_PX)
    .attr("viewBox", `0 0 ${width} ${root.height * ROW_PX}`);
  const g = svg
    .selectAll("g.n")
    .data(shownNodes, (n) => n.data.id)
    .join((enter) => {
      const e = enter.append("g").attr("class", "n");
      e.append("rect");
      e.append("title");
      e.append("text").attr("dy", "1.1em").attr("x", 3);
      return e;
    })
    .attr("transform", (n) => `translate(${n.x0},${(n.depth - 1) * ROW_PX})`)
    .on("mouseenter", (_, n) => setText("detail", describe(n.data)));
  g.select("rect")
    .attr("class", (n) => `${n.data.kind}${n.data.locked ? " locked" : ""}`)
    .attr("data-id", (n) => n.data.id)
    .attr("data-kind", (n) => n.data.kind)
    .attr("data-tokens", (n) => ownTokens(n.data))
    .attr("data-size", (n) => n.value)
    .attr("data-hits", (n) => n.data.hits ?? 0)
    .attr("data-label", (n) => n.data.label ?? n.data.tenant ?? "")
    .attr("width", (n) => Math.max(0, n.x1 - n.x0))
    .attr("height", ROW_PX - 1)
    .style("fill", (n) => (n.data.kind === "node" ? colour(n.data.last_access) : null));
  g.select("title").text((n) => describe(n.data));
  g.select("text").text((n) => {
    const room = Math.floor((n.x1 - n.x0 - 6) / 6.3);
    if (room < 2) return "";
    const d = n.data;
    const label =
      d.kind === "tenant" ? d.tenant : d.kind === "merged" ? `+${d.merged} nodes` : shown(d.label);
    const text = d.hits ? `${d.hits}× ${label}` : label;
    return text.length > room ? `${text.slice(0, room - 1)}…` : text;
  });
  const count = (k) => shownNodes.filter((n) => n.data.kind === k).length;
  view.drawn = { nodes: count("node"), merged: count("merged"), tenants: count("tenant"),
                 tokens: root.value };
  svg.attr("data-drawn-nodes", view.drawn.nodes).attr("data-drawn-tokens", root.value);
}

function drawHits(snap) {
  const box = document.getElementById("hits");
  const pts = snap.history;
  const width = Math.max(320, box.clientWidth);
  const height = 150;
  const m = { top: 8, right: 10, bottom: 20, left: 40 };
  const x = d3
    .scaleTime()
    .domain(d3.extent(pts, (p) => p.t * 1000))
    .range([m.left, width - m.right]);
  const y = d3.scaleLinear().domain([0, 1]).range([height - m.bottom, m.top]);
  const svg = d3.select(box).selectAll("svg").data([null]).join("svg")
    .attr("viewBox", `0 0 ${width} ${height}`).attr("height", height);
  const barW = Math.max(1, (width - m.left - m.right) / Math.max(1, pts.length) - 1);
  svg.selectAll("rect.bar")
    .data(pts.filter((p) => p.window_hit_rate != null), (p) => p.t)
    .join("rect")
    .attr("class", "bar")
    .attr("x", (p) => x(p.t * 1000) - barW / 2)
    .attr("width", barW)
    .attr("y", (p) => y(p.window_hit_rate))
    .attr("height", (p) => y(0) - y(p.window_hit_rate));
  const line = d3.line().defined((p) => p.hit_rate != null)
    .x((p) => x(p.t * 1000)).y((p) => y(p.hit_rate));
  svg.selectAll("path.cum").data([pts]).join("path").attr("class", "cum").attr("d", line);
  svg.selectAll("g.x").data([null]).join("g").attr("class", "axis x")
    .attr("transform", `translate(0,${height - m.bottom})`)
    .call(d3.axisBottom(x).ticks(6).tickFormat(d3.timeFormat("%H:%M:%S")));
  svg.selectAll("g.y").data([null]).join("g").attr("class", "axis y")
    .attr("transform", `translate(${m.left},0)`)
    .call(d3.axisLeft(y).ticks(4, "%"));
}

function fillTable(id, rows, cells) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(
    ...rows.map((r) => {
      const tr = document.createElement("tr");
      for (const [text, cls] of cells(r)) {
        const td = tr.appendChild(document.createElement("td"));
        td.textContent = text;
        if (cls) td.className = cls;
      }
      return tr;
    }),
  );
}

function drawTables(snap) {
  fillTable("tenants", snap.namespaces, (n) => [
    [n.namespace], [fmt(n.tree_tokens)], [fmt(n.tree_nodes)], [fmt(n.requests || 0)],
    [pct(n.prompt_tokens ? n.cached_tokens / n.prompt_tokens : null)],
  ]);
  fillTable("evictions", snap.evictions.recent.slice(0, 16), (e) => [
    [ago(snap.time - e.time)], [e.namespace], [fmt(e.tokens)], [String(e.hits)],
    [shown(e.label), "text"],
  ]);
}

function draw(snap) {
  view.snapshot = snap;
  drawSummary(snap);
  drawTree(snap);
  drawHits(snap);
  drawTables(snap);
  view.draws += 1;
  const status = document.getElementById("status");
  status.classList.remove("error");
  setText("updated", `updated ${new Date(snap.time * 1000).toLocaleTimeString()}`);
}

async function poll() {
  if (!view.paused) {
    try {
      const res = await fetch("/cache/snapshot", { cache: "no-store" });
      const body = await res.json();
      if (!res.ok) throw new Error(body.error ? body.error.message : res.statusText);
      draw(body);
    } catch (err) {
      document.getElementById("status").classList.add("error");
      setText("updated", `cannot update: ${err.message}`);
    }
  }
  setTimeout(poll, POLL_MS);
}

document.getElementById("pause").addEventListener("click", (ev) => {
  view.paused = !view.paused;
  ev.target.textContent = view.paused ? "resume" : "pause";
});
poll();
