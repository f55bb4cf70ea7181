// The status page (/admin/). Served as a file under a policy without 'unsafe-inline'.
// Everything shown that callers, scripts or operators wrote (bodies, headers, log lines,
// URLs, messages) is set as text: elements are made with createElement and filled with
// textContent or append(string); no markup is ever parsed from data.
"use strict";

const KEY = "oktell-admin-token";
const SVG = "http://www.w3.org/2000/svg";
const EXECUTIONS = 25;
const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;

let signedIn = false, timer = null, refreshing = false;
let previous = new Map(), lastAt = 0;
let traffic = null, trafficAt = 0;        // the last /stats/history answer (list view)
let view = { kind: "list" };
let channel = null;                       // the detail view's channel, as last read
let selected = null;                      // the detail view's open execution id

// ---- requests ----

async function call(method, path, body) {
  const init = { method, headers: { Authorization: "Bearer " + sessionStorage.getItem(KEY) } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch("../admin/v1" + path, init);
  if (res.status === 401) { throw new Error("unauthorized"); }
  let data = null;
  try { data = await res.json(); } catch (_) { data = null; }
  return { status: res.status, ok: res.ok, data };
}

async function api(path) {
  const r = await call("GET", path);
  if (!r.ok) { throw new Error(path + ": " + r.status); }
  return r.data;
}

// ---- building elements (text only) ----

function el(tag, cls, ...children) {
  const e = document.createElement(tag);
  if (cls) { e.className = cls; }
  for (const c of children) {
    if (c !== null && c !== undefined) { e.append(typeof c === "object" ? c : String(c)); }
  }
  return e;
}

function cell(row, text, cls) {
  const td = el("td", cls, text);
  row.appendChild(td);
  return td;
}

function pre(text, cls) { return el("pre", cls, text); }

/** A recorded text ({text, bytes, truncated}) as a <pre>. */
function textBlock(t) {
  if (!t) { return el("p", "quiet", "(none)"); }
  const p = pre(t.text === "" ? "(empty)" : t.text);
  if (t.truncated) { p.append(`\n… cut: ${t.bytes} bytes in all`); }
  return p;
}

function kv(pairs) {
  const dl = el("dl", "kv");
  for (const [k, v] of pairs) {
    if (v === undefined || v === null || v === "") { continue; }
    dl.append(el("dt", null, k), el("dd", null, v));
  }
  return dl;
}

function headerLines(headers) {
  return (headers || []).map(([k, v]) => `${k}: ${v}`).join("\n");
}

function errorText(body, status) {
  const e = body && body.error;
  if (!e) { return `The gateway answered ${status}.`; }
  let s = e.message || e.code;
  if (e.line) { s += ` (line ${e.line}${e.column ? ", column " + e.column : ""})`; }
  if (e.field) { s += ` [${e.field}]`; }
  return s;
}

function where(err) {
  const at = err.line ? `line ${err.line}${err.column ? ", column " + err.column : ""}: ` : "";
  return at + (err.message || err.code);
}

function when(rfc3339) {
  const d = new Date(rfc3339);
  return isNaN(d) ? String(rfc3339) : d.toLocaleString();
}

function count(n, what) { return `${n} ${what}${n === 1 ? "" : "s"}`; }

function age(seconds) {
  const s = Math.round(seconds);
  if (s < 60) { return s + " s"; }
  if (s < 3600) { return `${Math.floor(s / 60)} min ${s % 60} s`; }
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

// ---- sparklines ----

function windowText(t) {
  const minutes = (t.buckets * t.sample_ms) / 60000;
  return minutes >= 1 ? `last ${Math.round(minutes)} min` : `last ${Math.round(minutes * 60)} s`;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) { e.setAttribute(k, String(v)); }
  return e;
}

/** Requests as a line over an area, errors as bars on the same scale; the last point
 *  is the sample still filling. */
function sparkline(series, t, big) {
  const W = big ? 900 : 150, H = big ? 70 : 26, PAD = 2;
  const req = series ? series.requests.concat([series.requests_now]) : [];
  const err = series ? series.errors.concat([series.errors_now]) : [];
  const n = t.buckets + 1, step = W / (n - 1), off = n - req.length;
  const max = Math.max(1, ...req, ...err);
  const x = (i) => (off + i) * step;
  const y = (v) => H - PAD - (v / max) * (H - 2 * PAD);
  const sum = (a) => a.reduce((s, v) => s + v, 0);
  const s = svg("svg", { class: big ? "spark big" : "spark", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  if (!big) { s.setAttribute("width", W); s.setAttribute("height", H); }
  s.dataset.requests = sum(req);
  s.dataset.errors = sum(err);
  const title = svg("title", {});
  title.textContent = `${count(sum(req), "request")}, ${count(sum(err), "error")}, ${windowText(t)}; peak ${max} a sample`;
  s.append(title, svg("line", { class: "base", x1: 0, y1: H - PAD, x2: W, y2: H - PAD }));
  if (req.length > 1) {
    const pts = req.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    s.append(svg("polygon", { class: "area", points: `${x(0).toFixed(1)},${H - PAD} ${pts} ${x(req.length - 1).toFixed(1)},${H - PAD}` }));
    s.append(svg("polyline", { class: "requests", points: pts }));
  }
  const bw = Math.max(1.5, step * 0.7);
  err.forEach((v, i) => {
    if (v > 0) {
      const top = Math.min(y(v), H - PAD - 2);
      s.append(svg("rect", { class: "errors", x: (x(i) - bw / 2).toFixed(1), y: top.toFixed(1), width: bw.toFixed(1), height: (H - PAD - top).toFixed(1) }));
    }
  });
  return s;
}

function showWindow(t) {
  for (const w of document.querySelectorAll(".window")) { w.textContent = windowText(t); }
}

// ---- the list view ----

async function refreshList() {
  const now = performance.now();
  const wantTraffic = !traffic || now - trafficAt > 4000;
  const [page, nodes, eventing, history] = await Promise.all([
    api("/channels?limit=1000"), api("/nodes"), api("/stats/eventing"),
    wantTraffic ? api("/stats/history") : Promise.resolve(traffic),
  ]);
  if (wantTraffic) { traffic = history; trafficAt = now; showWindow(history); }
  const byId = new Map(traffic.channels.map((c) => [c.id, c]));
  const dt = lastAt ? (now - lastAt) / 1000 : 0;
  let total = 0;
  const body = $("channels");
  body.textContent = "";
  for (const ch of page.items) {
    const rt = ch.runtime || {};
    const before = previous.get(ch.id);
    const rate = dt && before !== undefined ? Math.max(0, (rt.requests - before) / dt) : 0;
    total += rate;
    previous.set(ch.id, rt.requests || 0);
    const row = document.createElement("tr");
    row.dataset.code = ch.code;
    row.dataset.id = ch.id;
    const link = el("a", null, ch.code);
    link.href = "#channel=" + enc(ch.id);
    cell(row, link, "code");
    cell(row, ch.kind);
    cell(row, !ch.enabled ? "disabled" : rt.served_here ? "served" : "other node", ch.enabled && rt.served_here ? "" : "off");
    const spark = cell(row, null, "spark");
    if (byId.has(ch.id)) { spark.append(sparkline(byId.get(ch.id), traffic, false)); }
    cell(row, rate.toFixed(1), "n");
    cell(row, rt.requests ?? "—", "n requests");
    cell(row, rt.errors ?? "—", "n" + (rt.errors ? " bad" : ""));
    cell(row, rt.timeouts ?? "—", "n" + (rt.timeouts ? " bad" : ""));
    cell(row, rt.in_flight ?? "—", "n");
    cell(row, rt.rejected ?? "—", "n" + (rt.rejected ? " bad" : ""));
    cell(row, rt.ws_opened !== undefined ? rt.ws_opened - rt.ws_closed : "—", "n");
    cell(row, rt.restarts ?? "—", "n" + (rt.restarts ? " bad" : ""));
    body.appendChild(row);
  }
  $("c-rate").textContent = total.toFixed(1);
  lastAt = now;
  showEventing(eventing, new Map(page.items.map((c) => [c.id, c.code])));
  const nodeRows = $("nodes");
  nodeRows.textContent = "";
  for (const n of nodes.items) {
    const row = document.createElement("tr");
    row.dataset.node = n.node_id;
    cell(row, n.node_id + (n.this_node ? " (this node)" : ""));
    cell(row, n.alive ? "up" : "down", n.alive ? "" : "off bad");
    cell(row, n.roles.length ? n.roles.join(",") : "all");
    cell(row, n.listen);
    cell(row, n.version);
    cell(row, (n.heartbeat_age_ms / 1000).toFixed(1) + " s ago", "n");
    nodeRows.appendChild(row);
  }
}

function showEventing(e, codes) {
  const o = e.outbox;
  $("e-pending").textContent = o ? o.pending : "—";
  $("e-oldest").textContent = o ? (o.pending ? age(o.oldest_pending_age_s) : "—") : "—";
  $("e-behind").textContent = o ? o.events_behind : "—";
  const d = e.deliveries;
  $("e-deliveries").textContent = `${d.delivered} · ${d.retried} · ${d.failed}`;
  const s = e.subscriptions;
  $("e-failing").textContent = s.failing;
  $("e-failing").classList.toggle("bad", s.failing > 0);
  $("e-disabled").textContent = s.disabled;
  $("e-disabled").classList.toggle("bad", s.disabled > 0);
  $("e-total").textContent = s.total;
  const rows = $("attention");
  rows.textContent = "";
  for (const a of e.attention) {
    const row = document.createElement("tr");
    row.dataset.subscription = a.id;
    cell(row, a.id);
    const ch = el("a", null, codes.get(a.channel_id) || a.channel_id);
    ch.href = "#channel=" + enc(a.channel_id);
    cell(row, ch);
    cell(row, a.url, "wrap");
    cell(row, a.enabled ? "failing" : "disabled", "bad");
    cell(row, a.enabled ? (a.failing_since ? "since " + when(a.failing_since) : "") : a.disabled_reason || "", "wrap");
    rows.appendChild(row);
  }
  $("attention-table").hidden = e.attention.length === 0;
  $("attention-none").hidden = e.attention.length !== 0;
}

// ---- the channel detail view ----

function scriptOf(trigger) {
  if (!channel) { return null; }
  return trigger === "websocket" ? channel.websocket_scenario : channel.webhook_scenario;
}

/** The script's lines around a failure, the failing one marked. */
function excerpt(source, line) {
  if (!source || !line) { return null; }
  const lines = source.split("\n");
  if (line > lines.length) { return null; }
  const p = el("pre", "script");
  const from = Math.max(1, line - 2), to = Math.min(lines.length, line + 2);
  for (let i = from; i <= to; i++) {
    const text = String(i).padStart(4) + "  " + lines[i - 1];
    p.append(i === line ? el("span", "hit", text) : text, i < to ? "\n" : "");
  }
  return p;
}

function logBlock(logs) {
  if (!logs || !logs.length) { return el("p", "quiet", "(no log lines)"); }
  const p = el("pre", "logs");
  logs.forEach((l, i) => {
    p.append(el("span", "log-" + String(l.level).replace(/[^a-z]/g, ""), `[${l.level}] `), l.message, i < logs.length - 1 ? "\n" : "");
  });
  return p;
}

function callsBlock(calls) {
  const box = el("div", "calls");
  if (!calls || !calls.length) { box.append(el("p", "quiet", "(no outgoing calls)")); return box; }
  for (const c of calls) {
    const status = c.error ? "error: " + c.error : c.status !== undefined ? String(c.status) : "—";
    box.append(el("div", null, el("code", null, `${c.method} ${c.url}`), ` → ${status} · ${c.duration_ms.toFixed(1)} ms · ${c.answered_by}`));
    if (c.headers && c.headers.length) { box.append(pre(headerLines(c.headers))); }
    if (c.body && c.body.bytes) { box.append(el("div", "quiet", "sent"), textBlock(c.body)); }
    if (c.response) { box.append(el("div", "quiet", "answer"), textBlock(c.response)); }
  }
  return box;
}

function replyBlock(reply) {
  if (!reply) { return el("p", "quiet", "(no reply)"); }
  const box = el("div", null, kv([["status", reply.code]]));
  if (reply.headers && reply.headers.length) { box.append(pre(headerLines(reply.headers))); }
  box.append(textBlock(reply.body));
  return box;
}

function errorBlock(err, source) {
  const box = el("div", "failure");
  box.append(el("div", "error where", `${err.code}: ${where(err)}`));
  const ex = excerpt(source, err.line);
  if (ex) { box.append(ex); }
  return box;
}

function inputsBlock(inputs) {
  if (!inputs) { return el("p", "quiet", "(not recorded)"); }
  const box = el("div");
  if (inputs.kind === "websocket") {
    box.append(kv([["session", inputs.session], ["peer", inputs.peer_ip]]), textBlock(inputs.text));
    return box;
  }
  box.append(kv([["request", `${inputs.method} ${inputs.path || "/"}`], ["host", inputs.host], ["peer", inputs.peer_ip], ["protocol", inputs.protocol]]));
  if (inputs.headers && inputs.headers.length) { box.append(pre(headerLines(inputs.headers), "headers")); }
  box.append(textBlock(inputs.body));
  return box;
}

async function openExecution(eid) {
  selected = eid;
  for (const r of $("d-executions").children) { r.classList.toggle("selected", r.dataset.eid === eid); }
  const id = view.id;
  const x = await api(`/channels/${enc(id)}/executions/${enc(eid)}`);
  if (view.id !== id || selected !== eid) { return; }
  const box = $("d-execution");
  box.textContent = "";
  box.dataset.eid = eid;
  box.append(el("h4", null, `Execution ${x.id}`), kv([
    ["time", when(x.time)], ["trigger", x.trigger], ["outcome", x.outcome], ["version", x.version],
    ["duration", `${x.duration_ms.toFixed(1)} ms (waiting ${x.wait_ms.toFixed(1)} ms, computing ${x.compute_ms.toFixed(1)} ms)`],
  ]));
  if (x.error) {
    const same = channel && channel.version === x.version;
    box.append(el("h4", null, "Error"), errorBlock(x.error, same ? scriptOf(x.trigger) : null));
  }
  box.append(el("h4", null, "Input"), inputsBlock(x.inputs));
  box.append(el("h4", null, "Reply"), replyBlock(x.reply));
  box.append(el("h4", null, "Log lines"), logBlock(x.logs));
  box.append(el("h4", null, "Outgoing calls"), callsBlock(x.calls));
  box.hidden = false;
}

function resetDetail() {
  channel = null;
  selected = null;
  for (const id of ["d-executions", "d-spark", "d-execution", "dr-result", "dr-error", "d-history", "d-totals", "d-meta"]) { $(id).textContent = ""; }
  $("d-code").textContent = "—";
  $("d-execution").hidden = true;
  $("dr-result").hidden = true;
}

async function refreshDetail() {
  const id = view.id;
  let ch;
  const r = await call("GET", `/channels/${enc(id)}`);
  if (!r.ok) {
    if (view.id === id) { $("d-meta").textContent = errorText(r.data, r.status); }
    return;
  }
  ch = r.data;
  const [history, page] = await Promise.all([
    api(`/stats/history?channel_id=${enc(id)}`),
    api(`/channels/${enc(id)}/executions?limit=${EXECUTIONS}`),
  ]);
  if (view.id !== id) { return; }
  channel = ch;
  $("d-code").textContent = ch.code;
  $("d-meta").textContent = `${ch.kind} · version ${ch.version} · ${ch.enabled ? "enabled" : "disabled"} · history = ${page.history}`;
  showWindow(history);
  const series = history.channels[0];
  const spark = $("d-spark");
  spark.textContent = "";
  spark.append(sparkline(series, history, true));
  $("d-totals").textContent = series
    ? `${count(Number(spark.firstChild.dataset.requests), "request")}, ${count(Number(spark.firstChild.dataset.errors), "error")}`
    : "not served on this node";
  let note = page.history === "off" ? "This channel records no runs (history = off)."
    : page.history === "errors" ? "Failed runs only (history = errors; set history = all to record every run)."
    : "Every run (history = all).";
  if (page.dropped) { note += ` ${page.dropped} runs were not recorded: the history writer could not keep up.`; }
  $("d-history").textContent = note;
  const rows = $("d-executions");
  rows.textContent = "";
  if (!page.items.length) {
    const row = document.createElement("tr");
    cell(row, "No recorded runs yet.", "off").colSpan = 6;
    rows.appendChild(row);
  }
  for (const x of page.items) {
    const row = document.createElement("tr");
    row.dataset.eid = x.id;
    row.dataset.outcome = x.outcome;
    if (x.outcome !== "ok") { row.classList.add("failed"); }
    if (x.id === selected) { row.classList.add("selected"); }
    cell(row, when(x.time));
    cell(row, x.trigger);
    cell(row, x.outcome, x.outcome === "ok" ? "ok" : "bad");
    cell(row, x.version, "n");
    cell(row, x.duration_ms.toFixed(1) + " ms", "n");
    const w = cell(row, x.error ? where(x.error) : "", "where");
    if (x.error) { w.title = x.error.message; }
    row.addEventListener("click", () => { openExecution(x.id).catch(failed); });
    rows.appendChild(row);
  }
}

function reportBlock(rep, draft) {
  const box = el("div");
  box.append(el("h4", null, rep.ok ? "Reply" : "Error"));
  box.dataset.ok = rep.ok;
  if (rep.ok) {
    box.append(replyBlock(rep.reply));
  } else {
    const source = draft || (channel && channel.version === rep.version ? scriptOf(rep.trigger) : null);
    box.append(errorBlock(rep.error, source));
  }
  box.append(kv([["script", `${rep.script} (version ${rep.version})`], ["duration", rep.duration_ms.toFixed(2) + " ms"], ["operations", rep.operations]]));
  box.append(el("h4", null, "Log lines"), logBlock(rep.logs));
  box.append(el("h4", null, "Outgoing calls (not performed)"), callsBlock(rep.calls));
  if (rep.events && rep.events.length) {
    box.append(el("h4", null, "Events"), pre(rep.events.map((e) => `${e.event_type} ${e.data.text}`).join("\n")));
  }
  if (rep.websocket && rep.websocket.length) {
    box.append(el("h4", null, "Websocket"), pre(rep.websocket.map((w) => `${w.op} ${w.session || ""} ${w.text ? w.text.text : ""}`).join("\n")));
  }
  return box;
}

async function dryRun(ev) {
  ev.preventDefault();
  $("dr-error").textContent = "";
  const headers = {};
  for (const line of $("dr-headers").value.split("\n")) {
    const t = line.trim();
    if (!t) { continue; }
    const i = t.indexOf(":");
    if (i <= 0) { $("dr-error").textContent = `Not a header ("Name: value"): ${t}`; return; }
    headers[t.slice(0, i).trim()] = t.slice(i + 1).trim();
  }
  const request = { method: $("dr-method").value.trim() || "POST", headers, body: $("dr-body").value };
  const path = $("dr-path").value.trim();
  if (path) { request.path = path; }
  const input = { request };
  const draft = $("dr-script").value;
  if (draft.trim()) { input.script = draft; }
  const button = $("dr-run");
  button.disabled = true;
  try {
    const r = await call("POST", `/channels/${enc(view.id)}/dry-run`, input);
    const out = $("dr-result");
    out.textContent = "";
    if (!r.ok) {
      $("dr-error").textContent = errorText(r.data, r.status);
      out.hidden = true;
      return;
    }
    out.append(reportBlock(r.data, input.script));
    out.hidden = false;
  } catch (e) {
    failed(e);
    if (e.message !== "unauthorized") { $("dr-error").textContent = "The gateway did not answer."; }
  } finally {
    button.disabled = false;
  }
}

// ---- navigation, refresh, sign-in ----

async function refresh() {
  if (refreshing || !signedIn) { return; }
  refreshing = true;
  try {
    const node = await api("/node");
    $("node").textContent = `domain ${node.domain} · roles ${node.roles.length ? node.roles.join(",") : "all"} · v${node.version} · ${node.database} · node ${node.node_id}${node.cluster.stale ? " · OUT OF TOUCH (503)" : ""} · up ${Math.round(node.uptime_seconds)} s`;
    $("c-channels").textContent = node.channels_served;
    $("c-ws").textContent = node.ws_sessions;
    $("c-queue").textContent = `${node.scenario_queue_depth} / ${node.scenario_queue_capacity}`;
    $("c-busy").textContent = `${node.scenario_busy} / ${node.scenario_threads}`;
    $("c-subs").textContent = node.event_subscribers;
    if (view.kind === "channel") { await refreshDetail(); } else { await refreshList(); }
  } catch (e) {
    failed(e);
  } finally {
    refreshing = false;
  }
}

function failed(e) {
  if (e && e.message === "unauthorized") { signOut("The token was refused."); }
}

function route() {
  const m = /^#channel=(.+)$/.exec(location.hash);
  const next = m ? { kind: "channel", id: decodeURIComponent(m[1]) } : { kind: "list" };
  if (next.kind === "channel" && (view.kind !== "channel" || view.id !== next.id)) { resetDetail(); }
  view = next;
  if (!signedIn) { return; }
  $("status").hidden = view.kind !== "list";
  $("detail").hidden = view.kind !== "channel";
  window.scrollTo(0, 0);
  refresh();
}

function showStatus() {
  signedIn = true;
  $("login").hidden = true;
  $("footer").hidden = false;
  route();
  clearInterval(timer);
  timer = setInterval(refresh, 2000);
}

function signOut(message) {
  signedIn = false;
  sessionStorage.removeItem(KEY);
  clearInterval(timer);
  $("status").hidden = true;
  $("detail").hidden = true;
  $("footer").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, $("token").value.trim());
    try { await api("/node"); $("token").value = ""; showStatus(); }
    catch (e) { signOut(e.message === "unauthorized" ? "The token was refused." : "The gateway did not answer."); }
  });
  $("signout").addEventListener("click", (ev) => { ev.preventDefault(); signOut(); });
  $("dry-run").addEventListener("submit", dryRun);
  window.addEventListener("hashchange", route);
  if (sessionStorage.getItem(KEY)) { showStatus(); } else { signOut(); }
});
