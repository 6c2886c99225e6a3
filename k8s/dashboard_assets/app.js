// ambit dashboard: draws /v1/dashboard every 2 s, and asks /v1/why for an opened edge.
// Plain JavaScript and SVG, nothing from elsewhere.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const POLL_MS = 2000;
const NODE_W = 190, NODE_H = 44, COL_GAP = 230, ROW_GAP = 40, PAD = 20, LINE_H = 14;
const state = { model: null, selected: null, why: {}, failing: false };

function el(name, attrs, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function html(name, attrs, text) {
  const e = document.createElement(name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmt(n, digits) {
  return n === null || n === undefined ? "–" : Number(n).toFixed(digits);
}

function pct(r) {
  return r === null || r === undefined ? "–" : `${(r * 100).toFixed(r === 1 ? 0 : 1)}%`;
}

function nodeTitle(n) {
  return n.kind === "external" ? n.name : `${n.namespace}/${n.name}`;
}

function edgeWords(e) {
  const unit = e.protocol === "http" ? "req/s" : "conn/s";
  const parts = [`${fmt(e.per_second, 2)} ${unit}`, `${pct(e.success_rate)} ok`];
  if (e.protocol === "http") parts.push(`p50 ${fmt(e.p50_ms, 1)} ms`, `p99 ${fmt(e.p99_ms, 1)} ms`);
  if (e.mtls) parts.push("mTLS");
  return parts.join(" · ");
}

function edgeClass(e) {
  if (e.denied) return "denied";
  if (e.success_rate !== null && e.success_rate < 1) return "errors";
  return "ok";
}

function edgeLabel(e, byId) {
  const from = byId[e.from], to = byId[e.to];
  let words = `${e.protocol === "http" ? "HTTP" : "TCP"} traffic from ${nodeTitle(from)} to `
    + `${to.kind === "service" ? "Service " : ""}${nodeTitle(to)}: ${edgeWords(e)}`;
  if (e.denied) words += `; DENIED: ${e.denied_count} refused by policy`;
  if (!e.mtls) words += "; not all mutual TLS";
  return words;
}

// Columns: senders only (and clients outside the mesh), Services and waypoints, the rest.
function layout(model) {
  const incoming = new Set(model.edges.map(e => e.to));
  const outgoing = new Set(model.edges.map(e => e.from));
  const cols = [[], [], []];
  for (const n of model.nodes) {
    if (n.kind === "service" || n.kind === "waypoint") cols[1].push(n);
    else if (outgoing.has(n.id) && !incoming.has(n.id)) cols[0].push(n);
    else if (n.kind === "external" && !incoming.has(n.id)) cols[0].push(n);
    else cols[2].push(n);
  }
  const pos = {};
  cols.forEach((col, c) => col.forEach((n, r) => {
    pos[n.id] = { x: PAD + c * (NODE_W + COL_GAP), y: PAD + r * (NODE_H + ROW_GAP) };
  }));
  const rows = Math.max(1, ...cols.map(c => c.length));
  return { pos, width: 2 * PAD + 3 * NODE_W + 2 * COL_GAP, height: 2 * PAD + rows * (NODE_H + ROW_GAP) };
}

function activate(g, id) {
  g.addEventListener("click", () => select(id));
  g.addEventListener("keydown", ev => {
    if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); select(id); }
  });
}

function drawGraph(model) {
  const svg = document.getElementById("graph");
  const focused = document.activeElement && document.activeElement.getAttribute
    ? document.activeElement.getAttribute("data-id") : null;
  const byId = Object.fromEntries(model.nodes.map(n => [n.id, n]));
  const { pos, width, height } = layout(model);
  svg.replaceChildren();
  const defs = el("defs");
  const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5",
    markerUnits: "userSpaceOnUse", markerWidth: "10", markerHeight: "10", orient: "auto" });
  marker.appendChild(el("path", { d: "M 0 0 L 10 5 L 0 10 z" }));
  defs.appendChild(marker);
  svg.appendChild(defs);
  for (const n of model.nodes) {
    const p = pos[n.id];
    const g = el("g", { class: `node kind-${n.kind}${state.selected === n.id ? " selected" : ""}`,
      tabindex: "0", role: "button", "data-id": n.id,
      "aria-label": `${n.kind === "external" ? "outside the mesh" : n.kind} ${nodeTitle(n)}`
        + `${n.policies.length ? `, ${n.policies.length} policies` : ""}`
        + `${n.routes.length ? `, ${n.routes.length} routes` : ""}` });
    g.appendChild(el("rect", { x: p.x, y: p.y, width: NODE_W, height: NODE_H, rx: 6 }));
    const kind = n.kind === "service" ? "svc " : n.kind === "waypoint" ? "waypoint " : "";
    g.appendChild(el("text", { x: p.x + 8, y: p.y + 18 }, `${kind}${n.name}`.slice(0, 30)));
    g.appendChild(el("text", { x: p.x + 8, y: p.y + 35, class: "ns" },
      (n.kind === "external" ? "not in the mesh" : n.namespace).slice(0, 32)));
    activate(g, n.id);
    svg.appendChild(g);
  }
  for (const n of model.nodes) {  // a Service to the workloads behind it: structure, not traffic
    for (const w of n.backends || []) {
      const a = pos[n.id], b = pos[w];
      if (!a || !b) continue;
      svg.insertBefore(el("path", { class: "backend", "aria-hidden": "true",
        d: `M ${a.x + NODE_W} ${a.y + NODE_H / 2} L ${b.x} ${b.y + NODE_H / 2}` }), svg.children[1]);
    }
  }
  const labels = [];
  for (const e of model.edges) {
    const a = pos[e.from], b = pos[e.to];
    if (!a || !b) continue;
    const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2;
    let d, lx, ly;
    if (b.x > a.x) {
      const x2 = b.x, y2 = b.y + NODE_H / 2;
      d = `M ${x1} ${y1} C ${x1 + 90} ${y1}, ${x2 - 90} ${y2}, ${x2} ${y2}`;
      lx = (x1 + x2) / 2; ly = (y1 + y2) / 2;
    } else {  // to the same column or back: around the right of both
      const x2 = b.x + NODE_W, y2 = b.y + NODE_H / 2, out = Math.max(x1, x2) + 110;
      d = `M ${x1} ${y1} C ${out} ${y1}, ${out} ${y2}, ${x2 + 2} ${y2}`;
      lx = out - 20; ly = (y1 + y2) / 2;
    }
    const lines = [(e.denied ? `DENIED ${e.denied_count} · ` : "")
      + `${fmt(e.per_second, 2)} ${e.protocol === "http" ? "req/s" : "conn/s"} · ${pct(e.success_rate)} ok${e.mtls ? " · mTLS" : ""}`];
    if (e.protocol === "http") lines.push(`p50 ${fmt(e.p50_ms, 1)} ms · p99 ${fmt(e.p99_ms, 1)} ms`);
    const w = 6.4 * Math.max(...lines.map(l => l.length)) + 12, h = LINE_H * lines.length + 6;
    labels.push({ e, d, lines, w, h, x: lx - w / 2, y: ly - h / 2 });
  }
  // Labels never cover each other: each moves down below any it would overlap.
  labels.sort((p, q) => p.y - q.y || p.x - q.x);
  const placed = [];
  for (const l of labels) {
    let moved = true;
    for (let tries = 0; moved && tries < 50; tries++) {
      moved = false;
      for (const o of placed) {
        if (l.x < o.x + o.w && o.x < l.x + l.w && l.y < o.y + o.h + 4 && o.y < l.y + l.h + 4) {
          l.y = o.y + o.h + 4; moved = true;
        }
      }
    }
    placed.push(l);
  }
  let bottom = height;
  for (const { e, d, lines, w, h, x, y } of labels) {
    const g = el("g", { class: `edge ${edgeClass(e)}${state.selected === e.id ? " selected" : ""}`,
      tabindex: "0", role: "button", "data-id": e.id, "data-denied": String(e.denied),
      "data-rate": String(e.per_second), "aria-label": edgeLabel(e, byId) });
    g.appendChild(el("title", {}, edgeLabel(e, byId)));
    g.appendChild(el("path", { d, class: "hit" }));
    g.appendChild(el("path", { d, class: "line", "marker-end": "url(#arrow)" }));
    const label = el("g", { class: "label" });
    label.appendChild(el("rect", { x, y, width: w, height: h, rx: 3 }));
    lines.forEach((line, i) => label.appendChild(
      el("text", { x: x + w / 2, y: y + LINE_H * (i + 1), "text-anchor": "middle" }, line)));
    g.appendChild(label);
    activate(g, e.id);
    svg.appendChild(g);
    bottom = Math.max(bottom, y + h + PAD);
  }
  svg.setAttribute("viewBox", `0 0 ${width + 140} ${bottom}`);
  svg.setAttribute("width", String(width + 140));  // drawn at its size: the box scrolls
  svg.setAttribute("height", String(bottom));
  if (focused) {
    const again = svg.querySelector(`[data-id="${CSS.escape(focused)}"]`);
    if (again) again.focus();
  }
}

function plot(title, ends, lines, digits, unit) {
  // lines: [[name, values, class]]; a missing value is a gap.
  const W = 320, H = 90, L = 40, B = 16;
  const values = lines.flatMap(([, v]) => v).filter(v => v !== null && v !== undefined);
  const max = Math.max(unit === "%" ? 100 : 0, ...values, 1e-9);
  const last = lines.map(([name, v]) => {
    const seen = v.filter(x => x !== null && x !== undefined);
    return `${name} ${seen.length ? fmt(seen[seen.length - 1], digits) + unit : "none"}`;
  }).join(", ");
  const svg = el("svg", { class: "plot", width: W, height: H, role: "img",
    "aria-label": `${title} over the last ${Math.round(-ends[0] / 60) || 1} minutes: latest ${last}; highest ${fmt(max, digits)}${unit}` });
  svg.appendChild(el("text", { x: 0, y: 10 }, `${title} (max ${fmt(max, digits)}${unit})`));
  svg.appendChild(el("line", { x1: L, y1: H - B, x2: W, y2: H - B, class: "axis" }));
  svg.appendChild(el("line", { x1: L, y1: 14, x2: L, y2: H - B, class: "axis" }));
  svg.appendChild(el("text", { x: L, y: H - 2 }, `${Math.round(ends[0] / 60)} min`));
  svg.appendChild(el("text", { x: W - 24, y: H - 2 }, "now"));
  const x = i => L + (W - L) * (ends.length > 1 ? i / (ends.length - 1) : 1);
  const y = v => H - B - (H - B - 16) * (v / max);
  for (const [, v, cls] of lines) {
    let d = "", pen = false;
    v.forEach((val, i) => {
      if (val === null || val === undefined) { pen = false; return; }
      d += `${pen ? "L" : "M"} ${x(i).toFixed(1)} ${y(val).toFixed(1)} `;
      pen = true;
    });
    if (d) svg.appendChild(el("path", { d, class: `line ${cls}` }));
  }
  return svg;
}

function plots(container, heading, byProtocol, ends) {
  const protocol = byProtocol.http ? "http" : byProtocol.tcp ? "tcp" : null;
  if (!protocol) return;
  const pts = byProtocol[protocol];  // each field: a value per span, null where none
  container.appendChild(html("h3", {}, heading));
  const rate = pts.per_second.map(v => (v === null ? 0 : v));
  container.appendChild(plot(protocol === "http" ? "Requests per second" : "Connections per second",
    ends, [["rate", rate, ""]], 2, "/s"));
  container.appendChild(plot("Success rate", ends,
    [["success", pts.success_rate.map(v => (v === null ? null : v * 100)), ""]], 1, "%"));
  if (protocol === "http") {
    container.appendChild(plot("Latency p50 and p99 (dashed)", ends,
      [["p50", pts.p50_ms, ""], ["p99", pts.p99_ms, "p99"]], 1, " ms"));
  }
}

function definitions(container, pairs) {
  const dl = html("dl");
  for (const [k, v] of pairs) {
    if (v === null || v === undefined || v === "" || (Array.isArray(v) && !v.length)) continue;
    dl.appendChild(html("dt", {}, k));
    dl.appendChild(html("dd", {}, Array.isArray(v) ? v.join(", ") : String(v)));
  }
  container.appendChild(dl);
}

function listOf(container, heading, items, render, none) {
  container.appendChild(html("h3", {}, heading));
  if (!items.length) { container.appendChild(html("p", {}, none)); return; }
  const ul = html("ul");
  for (const item of items) ul.appendChild(render(item));
  container.appendChild(ul);
}

function policyItem(p) {
  const li = html("li");
  if (p.action) li.appendChild(html("span", { class: `action-${p.action}` }, `${p.action} `));
  li.appendChild(document.createTextNode(
    `${p.kind} ${p.key}${p.mode ? ` (mode ${p.mode})` : ""}${p.enforced_by ? `, enforced by ${p.enforced_by}` : ""}`));
  if (p.rules) {
    const ul = html("ul");
    p.rules.forEach((r, i) => ul.appendChild(html("li", {}, `rule ${i + 1}: ${r}`)));
    li.appendChild(ul);
  }
  return li;
}

function showNode(body, n, model) {
  body.appendChild(html("h3", { id: "details-heading" },
    `${n.kind === "service" ? "Service" : n.kind === "external" ? "Outside the mesh" : n.kind === "waypoint" ? "Waypoint" : "Workload"} ${nodeTitle(n)}`));
  definitions(body, [["hostname", n.hostname], ["VIP", n.vip], ["ports", n.ports],
    ["endpoints", n.endpoints], ["backed by", (n.backends || []).map(b => b.replace("workload:", ""))],
    ["waypoint", n.waypoint], ["pods", n.pods], ["nodes", n.nodes],
    ["identity", n.identities], ["in the mesh", n.meshed === undefined ? null : n.meshed ? "yes" : "no"]]);
  const series = (model.series.nodes || {})[n.id] || {};
  const ends = model.series.ends || [];
  if (series.in) plots(body, "Received", series.in, ends);
  if (series.out) plots(body, "Sent", series.out, ends);
  if (!series.in && !series.out) body.appendChild(html("p", {}, "No traffic in the last minutes."));
  listOf(body, "Policies that apply", n.policies, policyItem, "None.");
  if (n.kind === "service") {
    listOf(body, "Routes", n.routes, r => html("li", {},
      `${r.kind} ${r.key}: ${r.rules} rule${r.rules === 1 ? "" : "s"}${r.ports.length ? `, port ${r.ports.join(", ")}` : ""}`), "None.");
    listOf(body, "Traffic policies", n.traffic_policies || [], t => html("li", {}, `${t.kind} ${t.key}`), "None.");
  }
}

function whyUrl(q) {
  const params = new URLSearchParams({ from: q.from, to: q.to });
  if (q.port) params.set("port", q.port);
  if (q.tcp) params.set("tcp", "1");
  return `/v1/why?${params}`;
}

function showWhy(section, e, version) {
  const key = `${e.id}@${version}`;
  const found = state.why[key];
  section.replaceChildren(html("h3", {}, `Why (ambit why ${e.why.from} ${e.why.to}${e.why.port ? ` --port ${e.why.port}` : ""}${e.why.tcp ? " --tcp" : ""})`));
  if (!found) {
    section.appendChild(html("p", {}, "Asking the control plane…"));
    state.why[key] = "pending";
    fetch(whyUrl(e.why), { cache: "no-store", credentials: "same-origin" })
      .then(r => r.json().then(body => ({ ok: r.ok, body })))
      .then(({ ok, body }) => { state.why[key] = ok ? body : { error: body.error || "failed" }; })
      .catch(err => { state.why[key] = { error: String(err) }; })
      .finally(() => { if (state.selected === e.id) showDetails(); });
    return;
  }
  if (found === "pending") { section.appendChild(html("p", {}, "Asking the control plane…")); return; }
  if (found.error) { section.appendChild(html("p", { class: "verdict-refused" }, found.error)); return; }
  const v = found.verdict;
  section.appendChild(html("p", { class: v.allowed ? "verdict-allowed" : "verdict-refused", id: "why-verdict" },
    `${v.allowed ? "ALLOWED" : "REFUSED"}${v.status ? `: ${v.status}` : ""}${v.flag !== "-" ? ` (${v.flag})` : ""}: ${v.summary}`));
  section.appendChild(html("pre", { id: "why-text", tabindex: "0", "aria-label": "ambit why, hop by hop" }, found.text));
}

function showEdge(body, e, model) {
  const byId = Object.fromEntries(model.nodes.map(n => [n.id, n]));
  body.appendChild(html("h3", { id: "details-heading" },
    `${nodeTitle(byId[e.from])} → ${nodeTitle(byId[e.to])} (${e.protocol === "http" ? "HTTP" : "TCP"})`));
  if (e.denied) body.appendChild(html("p", { class: "verdict-refused" }, `DENIED: ${e.denied_count} refused by policy in the last ${model.window_seconds} s`));
  const http = e.protocol === "http";
  definitions(body, [[http ? "requests/s" : "connections/s", fmt(e.per_second, 2)],
    ["success rate", pct(e.success_rate)], ["p50", http ? `${fmt(e.p50_ms, 1)} ms` : null],
    ["p99", http ? `${fmt(e.p99_ms, 1)} ms` : null], ["mutual TLS", e.mtls ? "all" : "not all"],
    [http ? "requests" : "connections", http ? e.requests : e.connections],
    ["response flags", Object.entries(e.response_flags).map(([f, n]) => `${f} ${n}`)],
    ["reported by", e.reporter], ["destination pods", e.destination_workloads],
    ["bytes in / out", http ? null : `${e.bytes_received} / ${e.bytes_sent}`]]);
  const section = html("section", { id: "why", "aria-label": "why" });
  body.appendChild(section);
  if (e.why) showWhy(section, e, model.version);
  else section.appendChild(html("p", {}, "No ambit why for this edge: its source is not a pod the mesh knows."));
}

function showDetails() {
  const body = document.getElementById("details-body");
  const model = state.model;
  if (!model || !state.selected) return;
  const scroll = body.scrollTop;
  body.replaceChildren();
  const node = model.nodes.find(n => n.id === state.selected);
  const edge = model.edges.find(e => e.id === state.selected);
  if (node) showNode(body, node, model);
  else if (edge) showEdge(body, edge, model);
  else body.appendChild(html("p", {}, "It is gone from the graph (no traffic in the window)."));
  body.scrollTop = scroll;
}

function select(id) {
  state.selected = id;
  document.querySelectorAll("#graph .selected").forEach(g => g.classList.remove("selected"));
  const g = document.querySelector(`#graph [data-id="${CSS.escape(id)}"]`);
  if (g) g.classList.add("selected");
  showDetails();
  const heading = document.getElementById("details-heading");
  setStatus(`Details of ${heading ? heading.textContent : id} shown beside the graph.`);
}

function setStatus(words, failing) {
  const s = document.getElementById("status");
  s.textContent = words;
  s.classList.toggle("failing", Boolean(failing));
}

async function poll() {
  try {
    const r = await fetch("/v1/dashboard?window=60", { cache: "no-store", credentials: "same-origin" });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
    state.model = body;
    drawGraph(body);
    showDetails();
    document.getElementById("window").textContent = `(last ${body.window_seconds} s, config version ${body.version ?? "none yet"})`;
    const updated = new Date().toLocaleTimeString();
    const words = body.observing ? `Live: updated ${updated}` : `Updated ${updated}; the control plane does not read metrics (--observe-interval 0)`;
    if (state.failing || !document.getElementById("status").textContent.startsWith("Details")) setStatus(words);
    document.body.setAttribute("data-updated", String(Date.now()));
    state.failing = false;
  } catch (err) {
    state.failing = true;
    setStatus(`Cannot read the mesh: ${err.message}. Retrying every ${POLL_MS / 1000} s.`, true);
  }
  setTimeout(poll, POLL_MS);
}

poll();
