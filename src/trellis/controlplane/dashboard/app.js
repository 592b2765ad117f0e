// The Trellis dashboard: reads the control plane's REST API every few seconds and draws
// the current tab. Plain JavaScript and SVG, no dependencies. Every element a test or a
// user may want to find carries data- attributes with the raw values.
"use strict";

const REFRESH_MS = 3000;
const SVG = "http://www.w3.org/2000/svg";
const state = { view: "graph", trace: null, timer: null };

// A bearer token given as /dashboard#token=... is kept for this tab and removed from the URL.
(function takeToken() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem("trellis-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname);
  }
})();

async function api(path) {
  const headers = {};
  const token = sessionStorage.getItem("trellis-token");
  if (token) headers.authorization = "Bearer " + token;
  const response = await fetch(path, { headers });
  const body = await response.json();
  if (!response.ok) throw new Error(body.message || response.status + " " + response.statusText);
  return body;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

const fmt = {
  rate: (v) => (v >= 100 ? v.toFixed(0) : v.toFixed(1)),
  pct: (v) => (v === null || v === undefined ? "-" : (v * 100).toFixed(v >= 0.9995 ? 0 : 1) + "%"),
  ms: (v) => (v === null || v === undefined ? "-" : v >= 100 ? v.toFixed(0) : v.toFixed(1)),
  time: (s) => new Date(s * 1000).toLocaleTimeString(),
};

function successClass(v) {
  if (v === null || v === undefined) return "";
  return v >= 0.99 ? "ok" : v >= 0.9 ? "warn" : "bad";
}

function query(extra) {
  const params = new URLSearchParams(extra || {});
  const ns = document.getElementById("namespace").value.trim();
  if (ns) params.set("namespace", ns);
  return params.toString();
}

function setStatus(text, stateName) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.dataset.state = stateName;
}

// ---- graph ---------------------------------------------------------------------------

// Columns by longest path from the callers (bounded by the node count, so cycles end).
function layers(nodes, edges) {
  const depth = new Map(nodes.map((n) => [n.id, 0]));
  for (let round = 0; round < nodes.length; round++) {
    let changed = false;
    for (const e of edges) {
      const next = depth.get(e.source) + 1;
      if (e.source !== e.target && next > depth.get(e.target) && next < nodes.length) {
        depth.set(e.target, next);
        changed = true;
      }
    }
    if (!changed) break;
  }
  return depth;
}

function lockIcon(x, y) {
  const g = svg("g", { class: "lock", transform: `translate(${x},${y})` });
  g.append(svg("rect", { x: 0, y: 4, width: 8, height: 6, rx: 1 }));
  g.append(svg("path", { d: "M1.5 4 V2.5 a2.5 2.5 0 0 1 5 0 V4", fill: "none", stroke: "#1e8e3e", "stroke-width": 1.4 }));
  g.append(svg("title", {}, "mutual TLS"));
  return g;
}

function drawGraph(graph) {
  const root = document.getElementById("graph");
  root.replaceChildren();
  const nodes = graph.nodes;
  const edges = graph.edges;
  document.getElementById("graph-empty").hidden = nodes.length > 0;
  const depth = layers(nodes, edges);
  const columns = new Map();
  for (const node of nodes) {
    const d = depth.get(node.id);
    if (!columns.has(d)) columns.set(d, []);
    columns.get(d).push(node);
  }
  const W = 150, H = 40, GAP_X = 190, GAP_Y = 44, PAD = 24;
  const place = new Map();
  let tallest = 0;
  for (const [d, column] of columns) {
    column.sort((a, b) => a.id.localeCompare(b.id));
    column.forEach((node, i) => place.set(node.id, { x: PAD + d * (W + GAP_X), y: PAD + i * (H + GAP_Y) }));
    tallest = Math.max(tallest, column.length);
  }
  const width = PAD * 2 + Math.max(1, columns.size) * (W + GAP_X) - GAP_X;
  const height = PAD * 2 + Math.max(1, tallest) * (H + GAP_Y);
  root.setAttribute("viewBox", `0 0 ${width} ${height}`);
  root.style.height = height + "px";
  root.style.maxWidth = width + "px";
  root.append(svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
    markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, svg("path", { d: "M0 0 L10 5 L0 10 z", fill: "#8a93a6" }))));
  for (const e of edges) {
    const a = place.get(e.source), b = place.get(e.target);
    if (!a || !b) continue;
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2;
    const mid = (x1 + x2) / 2;
    const classes = ["edge"];
    if (!(e.rps > 0) && !(e.tcpConnectionsPerSecond > 0)) classes.push("idle");
    if (e.success !== null && e.success < 0.9) classes.push("failing");
    const g = svg("g", { class: classes.join(" "), "data-edge-id": e.id, "data-source": e.source,
      "data-target": e.target, "data-rps": e.rps, "data-success": e.success ?? "",
      "data-p99": e.p99 ?? "", "data-mtls": e.mtls, "data-protocol": e.protocol });
    g.append(svg("path", { d: `M${x1} ${y1} C${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`, "marker-end": "url(#arrow)" }));
    // Above the line: rate and success; below: p99; the lock after the first line.
    const above = e.protocol === "tcp"
      ? `${fmt.rate(e.tcpConnectionsPerSecond)} conn/s`
      : `${fmt.rate(e.rps)} rps · ${fmt.pct(e.success)}`;
    const below = e.protocol === "tcp" ? `${fmt.rate(e.tcpBytesPerSecond / 1024)} KiB/s` : `p99 ${fmt.ms(e.p99)} ms`;
    const lx = mid, ly = (y1 + y2) / 2;
    const text = svg("text", { x: lx, y: ly - 6, "text-anchor": "middle", class: "edge-label" }, above);
    g.append(text);
    g.append(svg("text", { x: lx, y: ly + 14, "text-anchor": "middle", class: "edge-label" }, below));
    g.append(svg("title", {}, `${e.source} → ${e.target}\nmTLS: ${e.mtls}`));
    root.append(g);
    if (e.mtls === "yes") g.append(lockIcon(lx + text.getComputedTextLength() / 2 + 4, ly - 16));
  }
  for (const node of nodes) {
    const p = place.get(node.id);
    const g = svg("g", { class: `node ${node.kind}`, "data-node-id": node.id, "data-kind": node.kind,
      transform: `translate(${p.x},${p.y})` });
    g.append(svg("rect", { width: W, height: H, rx: node.kind === "service" ? 20 : 4 }));
    g.append(svg("text", { x: W / 2, y: 17, "text-anchor": "middle" }, node.name));
    const sub = node.kind === "service" ? `service · ${node.namespace}`
      : `${node.namespace}${node.version ? " · " + node.version : ""}`;
    g.append(svg("text", { x: W / 2, y: 31, "text-anchor": "middle", class: "sub" }, sub));
    root.append(g);
  }
}

function drawEdgeRows(rows) {
  const body = document.querySelector("#edges tbody");
  body.replaceChildren(...rows.map((r) => el("tr", { class: "edge-row", "data-source": r.source,
      "data-destination": r.destination, "data-service": r.service, "data-rps": r.rps },
    el("td", {}, `${r.source}.${r.sourceNamespace}`),
    el("td", {}, `${r.destination}.${r.destinationNamespace}`),
    el("td", {}, `${r.service}.${r.serviceNamespace}`),
    el("td", {}, r.version || "-"),
    el("td", { class: "num" }, fmt.rate(r.rps)),
    el("td", { class: "num " + successClass(r.success) }, fmt.pct(r.success)),
    el("td", { class: "num" }, fmt.ms(r.p50)),
    el("td", { class: "num" }, fmt.ms(r.p90)),
    el("td", { class: "num" }, fmt.ms(r.p99)),
    el("td", { class: r.mtls === "yes" ? "ok" : r.mtls === "-" ? "" : "bad" }, r.mtls))));
}

async function showGraph() {
  const windowValue = document.getElementById("window").value;
  const graph = await api("/api/v1/graph?" + query({ window: windowValue }));
  drawGraph(graph);
  drawEdgeRows(graph.rows);
}

// ---- services ------------------------------------------------------------------------

function sparkline(points, key) {
  const values = points.map((p) => p[key]).map((v) => (v === null || v === undefined ? 0 : v));
  const box = svg("svg", { class: "spark", viewBox: "0 0 120 24", preserveAspectRatio: "none",
    "data-points": values.length });
  if (values.length < 2) return box;
  const max = Math.max(...values, key === "success" ? 1 : 1e-9);
  const coords = values.map((v, i) => `${(i * 120) / (values.length - 1)},${22 - (v / max) * 20}`);
  box.append(svg("polyline", { points: coords.join(" ") }));
  return box;
}

async function showServices() {
  const windowValue = document.getElementById("window").value;
  const answer = await api("/api/v1/services/stats?" + query({ window: windowValue === "30s" ? "5m" : "10m" }));
  const body = document.querySelector("#services tbody");
  body.replaceChildren(...answer.items.map((s) => el("tr", { class: "service", "data-service": `${s.name}.${s.namespace}`,
      "data-rps": s.current.rps },
    el("td", {}, `${s.name}.${s.namespace}`),
    el("td", { class: "num" }, fmt.rate(s.current.rps)),
    el("td", {}, sparkline(s.series, "rps")),
    el("td", { class: "num " + successClass(s.current.success) }, fmt.pct(s.current.success)),
    el("td", {}, sparkline(s.series, "success")),
    el("td", { class: "num" }, fmt.ms(s.current.p50)),
    el("td", { class: "num" }, fmt.ms(s.current.p99)),
    el("td", {}, sparkline(s.series, "p99")))));
}

// ---- traces --------------------------------------------------------------------------

async function showTraces() {
  const answer = await api("/api/v1/traces?limit=100");
  const body = document.querySelector("#traces tbody");
  body.replaceChildren(...answer.items.map((t) => {
    const row = el("tr", { class: "trace" + (t.traceId === state.trace ? " selected" : ""),
        "data-trace-id": t.traceId, "data-span-count": t.spanCount },
      el("td", {}, fmt.time(t.receivedAt)),
      el("td", {}, `${t.rootService}: ${t.rootName}`),
      el("td", {}, t.services.join(", ")),
      el("td", { class: "num" }, t.spanCount),
      el("td", { class: "num" }, fmt.ms(t.durationMs)),
      el("td", {}, el("code", {}, t.traceId)));
    row.addEventListener("click", () => openTrace(t.traceId));
    return row;
  }));
  if (state.trace) await drawTrace(state.trace);
}

async function openTrace(traceId) {
  state.trace = traceId;
  for (const row of document.querySelectorAll("tr.trace")) {
    row.classList.toggle("selected", row.dataset.traceId === traceId);
  }
  await drawTrace(traceId);
}

// Spans in tree order (children after their parent, by start time), with their depth.
function spanTree(spans) {
  const ids = new Set(spans.map((s) => s.spanId));
  const children = new Map();
  const roots = [];
  for (const span of spans) {
    if (span.parentSpanId && ids.has(span.parentSpanId)) {
      if (!children.has(span.parentSpanId)) children.set(span.parentSpanId, []);
      children.get(span.parentSpanId).push(span);
    } else {
      roots.push(span);
    }
  }
  const ordered = [];
  const stack = roots.slice().reverse().map((s) => [s, 0]);
  while (stack.length && ordered.length < spans.length) {
    const [span, depth] = stack.pop();
    ordered.push([span, depth]);
    const kids = (children.get(span.spanId) || []).slice().sort((a, b) => b.startTimeUnixNano - a.startTimeUnixNano);
    for (const kid of kids) stack.push([kid, depth + 1]);
  }
  return ordered;
}

async function drawTrace(traceId) {
  const detail = document.getElementById("trace-detail");
  let trace;
  try {
    trace = await api("/api/v1/traces/" + encodeURIComponent(traceId));
  } catch (error) {
    detail.hidden = false;
    document.getElementById("trace-title").textContent = `trace ${traceId}: ${error.message}`;
    document.getElementById("waterfall").replaceChildren();
    return;
  }
  const spans = trace.spans;
  const start = Math.min(...spans.map((s) => s.startTimeUnixNano));
  const end = Math.max(...spans.map((s) => s.endTimeUnixNano));
  const total = Math.max(1, end - start);
  document.getElementById("trace-title").textContent =
    `trace ${traceId} · ${spans.length} spans · ${fmt.ms(total / 1e6)} ms`;
  const rows = spanTree(spans).map(([span, depth]) => {
    const left = ((span.startTimeUnixNano - start) / total) * 100;
    const width = Math.max(0.3, ((span.endTimeUnixNano - span.startTimeUnixNano) / total) * 100);
    const bar = el("div", { class: `span-bar ${span.kind}${span.status === "error" ? " error" : ""}`,
        "data-span-id": span.spanId, "data-parent-id": span.parentSpanId || "",
        "data-service": span.service, style: `left:${left}%;width:${width}%`,
        title: Object.entries(span.attributes).map(([k, v]) => `${k}=${v}`).join("\n") },
      `${fmt.ms(span.durationMs)} ms`);
    return el("div", { class: "span-row" },
      el("div", { class: "span-label", style: `padding-left:${depth * 14}px` }, `${span.service} · ${span.name}`),
      el("div", { class: "span-track" }, bar));
  });
  document.getElementById("waterfall").replaceChildren(...rows);
  detail.hidden = false;
  detail.dataset.traceId = traceId;
}

// ---- proxies -------------------------------------------------------------------------

// istioctl's words per type (SYNCED, STALE, NOT SENT), summed up for the proxy.
function syncState(proxy) {
  const types = Object.values(proxy.types);
  if (types.some((t) => t.state !== "SYNCED" && t.lastNack)) return "nacked";
  if (types.some((t) => t.state === "SYNCED") && types.every((t) => t.state !== "STALE")) return "synced";
  return types.length ? "stale" : "unknown";
}

async function showProxies() {
  const [proxies, graph] = await Promise.all([
    api("/api/v1/proxies"),
    api("/api/v1/graph?window=30s").catch(() => ({ scrapes: [] })),
  ]);
  const scrapes = new Map((graph.scrapes || []).map((s) => [s.proxy, s]));
  const body = document.querySelector("#proxies tbody");
  body.replaceChildren(...proxies.items.map((p) => {
    const sync = syncState(p);
    const scrape = scrapes.get(p.id);
    const types = Object.entries(p.types).map(([name, t]) => `${name}:${t.state}`).join(" ");
    return el("tr", { class: "proxy", "data-proxy-id": p.id, "data-sync": sync },
      el("td", {}, p.id),
      el("td", {}, p.workload || "-"),
      el("td", {}, p.namespace || "-"),
      el("td", {}, p.connectedSince ? fmt.time(p.connectedSince) : "-"),
      el("td", { class: sync === "synced" ? "ok" : sync === "nacked" ? "bad" : "warn", title: types }, sync),
      el("td", {}, p.snapshotVersion || "-"),
      el("td", { class: scrape ? (scrape.ok ? "ok" : "bad") : "", title: scrape && scrape.error ? scrape.error : "" },
        scrape ? (scrape.ok ? `ok (${scrape.series} series)` : "failed") : "-"));
  }));
}

// ---- config --------------------------------------------------------------------------

function yamlScalar(value) {
  if (value === null) return "null";
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  const text = String(value);
  return /^[A-Za-z0-9_./@-][A-Za-z0-9_ ./@:-]*$/.test(text) && !/^(true|false|null|yes|no|~|[0-9.+-]+)$/i.test(text)
    && !/: |\s$/.test(text) ? text : JSON.stringify(text);
}

function toYaml(value, indent) {
  const pad = "  ".repeat(indent);
  if (Array.isArray(value)) {
    if (!value.length) return " []";
    return value.map((item) => {
      const inner = toYaml(item, indent + 1);
      return "\n" + pad + "-" + (inner.startsWith("\n") ? inner.replace(/^\n\s*/, " ") : inner);
    }).join("");
  }
  if (value && typeof value === "object") {
    const keys = Object.keys(value);
    if (!keys.length) return " {}";
    return keys.map((key) => "\n" + pad + yamlScalar(key) + ":" + toYaml(value[key], indent + 1)).join("");
  }
  return " " + yamlScalar(value);
}

async function showConfig() {
  const answer = await api("/api/v1/config?" + query());
  const asYaml = document.getElementById("config-format").value === "yaml";
  const text = asYaml
    ? answer.items.map((doc) => toYaml(doc, 0).replace(/^\n/, "")).join("\n---\n")
    : JSON.stringify(answer.items, null, 2);
  const pre = document.getElementById("config");
  pre.textContent = text || "# no resources stored";
  pre.dataset.items = answer.items.length;
}

// ---- refresh loop --------------------------------------------------------------------

const VIEWS = { graph: showGraph, services: showServices, traces: showTraces, proxies: showProxies, config: showConfig };

async function refresh() {
  clearTimeout(state.timer);
  try {
    await VIEWS[state.view]();
    setStatus("updated " + new Date().toLocaleTimeString(), "ok");
  } catch (error) {
    setStatus(String(error.message || error), "error");
  }
  state.timer = setTimeout(refresh, REFRESH_MS);
}

function select(view) {
  state.view = view;
  for (const button of document.querySelectorAll("#tabs button")) {
    button.classList.toggle("active", button.dataset.view === view);
  }
  for (const section of document.querySelectorAll(".view")) {
    section.classList.toggle("active", section.id === "view-" + view);
  }
  refresh();
}

for (const button of document.querySelectorAll("#tabs button")) {
  button.addEventListener("click", () => select(button.dataset.view));
}
for (const id of ["namespace", "window", "config-format"]) {
  document.getElementById(id).addEventListener("change", refresh);
}
select(location.search.includes("view=") ? new URLSearchParams(location.search).get("view") in VIEWS
  ? new URLSearchParams(location.search).get("view") : "graph" : "graph");
