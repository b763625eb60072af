// The live page of a traintel run. It reads /events?record=1: `record` events carry the run's
// record lines from its first (every logged step), `progress` events the live status each second.
// Plain JavaScript, no build step; uPlot draws the curves.
"use strict";

const $ = (id) => document.getElementById(id);
const KEEP = { events: 100, logs: 200, errors: 50 };

function num(v) { // record values: numbers, or "nan"/"inf"/"-inf" text
  if (typeof v === "number") return v;
  if (v === "nan") return NaN;
  if (v === "inf") return Infinity;
  if (v === "-inf") return -Infinity;
  return null;
}
function fmt(v) {
  const n = num(v);
  if (n === null) return "-";
  if (!isFinite(n)) return String(v);
  if (Number.isInteger(n)) return String(n);
  return Math.abs(n) >= 1e4 || (n !== 0 && Math.abs(n) < 1e-3) ? n.toExponential(3) : n.toPrecision(5);
}
function duration(s) {
  if (s == null) return "-";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h}h${String(m).padStart(2, "0")}m` : m ? `${m}m${String(s % 60).padStart(2, "0")}s` : `${s}s`;
}
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text != null) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}
function prepend(list, item, keep) {
  list.insertBefore(item, list.firstChild);
  while (list.children.length > keep) list.removeChild(list.lastChild);
}

// A chart over steps: each series a column, null where a step did not log it.
class Chart {
  constructor(key, title, pick) {
    this.key = key; this.title = title; this.pick = pick;
    this.x = []; this.names = []; this.cols = {}; this.plot = null; this.shape = "";
    this.box = el("section", null, "card");
    this.box.id = "chart-" + key;
    this.box.appendChild(el("h2", title));
    this.area = el("div");
    this.box.appendChild(this.area);
  }
  add(line) {
    const values = this.pick(line);
    if (!values) return;
    const names = Object.keys(values);
    if (!names.length) return;
    for (const n of names) {
      if (!(n in this.cols)) { this.names.push(n); this.cols[n] = new Array(this.x.length).fill(null); }
    }
    this.x.push(line.step);
    for (const n of this.names) {
      const v = n in values ? num(values[n]) : null;
      this.cols[n].push(v === null || !isFinite(v) ? null : v);
    }
  }
  get data() { return [this.x, ...this.names.map((n) => this.cols[n])]; }
  draw() {
    if (!this.x.length) return;
    if (!this.box.parentNode) $("charts").appendChild(this.box);
    const shape = this.names.join("\u0000");
    const width = Math.max(300, this.area.clientWidth || 520);
    if (this.plot && shape === this.shape) { this.plot.setData(this.data); return; }
    if (this.plot) this.plot.destroy();
    this.shape = shape;
    const colours = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"];
    this.plot = new uPlot({
      width, height: 220, scales: { x: { time: false } },
      series: [{ label: "step" }, ...this.names.map((n, i) => ({ label: n, stroke: colours[i % colours.length], width: 1.5, spanGaps: true }))],
      axes: [{ label: "step" }, { size: 70 }],
    }, this.data, this.area);
  }
  reset() { this.x = []; this.names = []; this.cols = {}; if (this.plot) this.plot.destroy(); this.plot = null; this.shape = ""; }
}

const isLoss = (k) => /loss/i.test(k);
const isLr = (k) => /(^|[\/._-])lr$|learning_rate/i.test(k);
function pickKeys(test) {
  return (l) => {
    if (l.type !== "step" || !l.metrics) return null;
    const out = {};
    for (const [k, v] of Object.entries(l.metrics)) if (test(k)) out[k] = v;
    return out;
  };
}
const charts = {
  loss: new Chart("loss", "Loss", pickKeys(isLoss)),
  lr: new Chart("lr", "Learning rate", pickKeys(isLr)),
  throughput: new Chart("throughput", "Throughput (per second)", (l) => {
    if (l.type !== "step" || !(l.step_s > 0)) return null;
    const m = l.metrics || {};
    if (num(m.samples) !== null) return { "samples/s": num(m.samples) / l.step_s };
    if (num(m.tokens) !== null) return { "tokens/s": num(m.tokens) / l.step_s };
    return { "steps/s": 1 / l.step_s };
  }),
  data_wait: new Chart("data_wait", "Data wait (s per step)", (l) =>
    l.type === "step" && l.data_wait_s != null ? { data_wait_s: l.data_wait_s } : null),
  other: new Chart("other", "Other step metrics", pickKeys((k) => !isLoss(k) && !isLr(k) && k !== "samples" && k !== "tokens")),
  eval: new Chart("eval", "Evaluations", (l) => (l.type === "eval" ? l.metrics : null)),
};

// What the page has read, for the numbers shown (and for tests that compare them to the record).
const state = { steps: 0, lastLoss: null, evals: {}, values: {}, milestones: [], debug: null, ended: null, exportMode: null };
window.traintelPage = { charts, state };

function onLine(l) {
  for (const c of Object.values(charts)) c.add(l);
  switch (l.type) {
    case "step":
      state.steps += 1;
      if (l.metrics && "loss" in l.metrics) state.lastLoss = l.metrics.loss;
      break;
    case "eval":
      for (const [k, v] of Object.entries(l.metrics || {})) {
        state.evals[k] = { latest: v, best: (l.best || {})[k], best_step: (l.best_step || {})[k] };
      }
      addEvent(l, `eval at step ${l.step}: ` + Object.entries(l.metrics || {}).map(([k, v]) => `${k}=${fmt(v)}` + ((l.is_best || {})[k] ? " (best)" : "")).join(", "));
      break;
    case "values":
      Object.assign(state.values, l.metrics || {});
      break;
    case "milestone":
      state.milestones.push(`${l.percent}% at step ${l.step} (${duration(l.elapsed_s)})`);
      addEvent(l, `milestone ${l.percent}% at step ${l.step}, ETA ${duration(l.eta_s)}`);
      break;
    case "event":
      addEvent(l, `${l.event}` + (l.message ? `: ${l.message}` : "") + (l.fields && Object.keys(l.fields).length ? " " + JSON.stringify(l.fields) : ""));
      break;
    case "epoch":
      addEvent(l, `epoch ${l.epoch} done: ${l.steps} steps in ${duration(l.duration_s)}`);
      break;
    case "run_start":
      state.ended = null;
      state.exportMode = l.export;
      $("title").textContent = `${l.project}/${l.name}`;
      addEvent(l, `run started on ${l.host} (segment ${l.segment})`);
      break;
    case "run_end":
      state.ended = l.status;
      addEvent(l, `run ended: ${l.status} after ${l.steps} steps`);
      break;
    case "config":
      addEvent(l, `config (${l.reason}): ${l.config_hash}`);
      break;
    case "error": {
      const li = el("li", null, l.severity === "critical" || l.severity === "high" ? "error" : "warning");
      li.appendChild(el("b", `${l.error_type}/${l.severity}`));
      li.appendChild(document.createTextNode(` step ${l.step}: ${l.exc_type}: ${l.message || ""}`));
      for (const h of l.hints || []) li.appendChild(el("div", "hint: " + h, "hint"));
      prepend($("errors"), li, KEEP.errors);
      addEvent(l, `error ${l.error_type}: ${l.exc_type}`);
      break;
    }
    case "log":
      prepend($("logs"), el("li", `${time(l.ts)} ${String(l.level || "").toUpperCase()} ${l.logger}: ${l.message}`, l.level), KEEP.logs);
      break;
    case "export":
      if (!l.ok) addEvent(l, `export of ${l.signal} failed (${l.count} items)`);
      break;
  }
}
function time(ts) { return ts ? new Date(ts * 1000).toLocaleTimeString() : ""; }
function addEvent(l, text) { prepend($("events"), el("li", `${time(l.ts)} ${text}`, l.level), KEEP.events); }

function render() {
  $("steps-count").textContent = state.steps;
  $("last-loss").textContent = fmt(state.lastLoss);
  $("milestones").textContent = state.milestones.length ? "milestones: " + state.milestones.join(" · ") : "";
  const body = $("evals");
  body.textContent = "";
  for (const [k, e] of Object.entries(state.evals)) {
    const tr = el("tr");
    tr.dataset.metric = k;
    for (const [text, cls] of [[k], [fmt(e.latest)], [fmt(e.best), "best"], [e.best_step ?? "-"]]) tr.appendChild(el("td", text, cls));
    body.appendChild(tr);
  }
  table($("values"), Object.entries(state.values).map(([k, v]) => [k, fmt(v)]));
  for (const c of Object.values(charts)) c.draw();
}
function table(body, rows) {
  body.textContent = "";
  for (const row of rows) { const tr = el("tr"); for (const cell of row) tr.appendChild(el("td", cell)); body.appendChild(tr); }
}

function onProgress(s) {
  $("status").textContent = s.status;
  $("status").className = "badge " + s.status;
  $("run").textContent = `run ${s.run} · rank ${s.rank}`;
  $("step").textContent = s.step;
  $("total-steps").textContent = s.total_steps ? ` / ${s.total_steps}` : "";
  $("epoch").textContent = s.epoch;
  $("total-epochs").textContent = s.total_epochs ? ` / ${s.total_epochs}` : "";
  $("eta").textContent = duration(s.eta_s);
  $("bar").style.width = s.progress != null ? `${Math.min(100, s.progress * 100)}%` : "0";
  const ex = s.export || {};
  const rows = Object.entries(ex.failures || {}).map(([k, v]) => [`${k} exports failed`, String(v)]);
  rows.unshift(["export", state.exportMode === "otlp" ? "OTLP, live" : state.exportMode === "offline" ? "offline: record only (traintel sync sends it later)" : String(state.exportMode || "-")]);
  rows.push(["last export error", ex.last_error || "none"], ["record lines dropped", String(s.record_dropped ?? 0)]);
  table($("export"), rows);
  showDebug(s.debug);
}
function showDebug(on) {
  state.debug = on;
  $("debug").textContent = on ? "on" : "off";
  $("debug").setAttribute("aria-pressed", String(!!on));
}

// Same-origin JSON: what /debug accepts (a cross-site page cannot send it).
$("debug").addEventListener("click", async () => {
  const r = await fetch("/debug", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ enabled: !state.debug }) });
  if (r.ok) showDebug((await r.json()).enabled);
});

fetch("/page.json").then((r) => r.json()).then((p) => {
  showDebug(p.debug);
  for (const [name, url] of Object.entries(p.links || {})) {
    const a = el("a", name === "grafana" ? "Grafana" : "Prometheus");
    a.href = url; a.rel = "noopener noreferrer"; a.style.marginRight = "1em";
    $("links").appendChild(a);
  }
});

let dirty = false;
function soon() {
  if (dirty) return;
  dirty = true;
  setTimeout(() => { dirty = false; render(); }, 250);
}
const source = new EventSource("/events?record=1");
source.addEventListener("open", () => { // the stream (re)starts at the record's first line
  for (const c of Object.values(charts)) c.reset();
  Object.assign(state, { steps: 0, lastLoss: null, evals: {}, values: {}, milestones: [] });
  for (const id of ["events", "errors", "logs"]) $(id).textContent = "";
});
source.addEventListener("record", (e) => { for (const l of JSON.parse(e.data)) onLine(l); soon(); });
source.addEventListener("progress", (e) => onProgress(JSON.parse(e.data)));
source.addEventListener("error", () => {
  if (state.ended) { // the run is over and its endpoint gone: the page keeps what it showed
    source.close();
    $("status").textContent = state.ended;
    $("status").className = "badge " + state.ended;
  } else {
    $("status").textContent = "disconnected (retrying)";
  }
});
