// shadowroute scorecard: polls the JSON API every 2 s and draws verdicts, intervals, latency,
// production quality and drift. No dependencies; charts are inline SVG.
"use strict";

const POLL_MS = 2000;
const SVG_NS = "http://www.w3.org/2000/svg";
const MAX_TRACE = 400;
// Interval history per route/candidate/metric, gathered from the API's series, the decision
// history and this page's own polls: {key: Map(n -> {n, estimate, lower, upper})}.
const traces = new Map();

// ---- formatting -----------------------------------------------------------------------------

function isNum(x) { return typeof x === "number" && Number.isFinite(x); }
function signed(x) { return isNum(x) ? (x >= 0 ? "+" : "") + x.toFixed(3) : "n/a"; }
function fixed(x, d = 3) { return isNum(x) ? x.toFixed(d) : "n/a"; }
function pct(x) { return isNum(x) ? (100 * x).toFixed(1) + "%" : "n/a"; }
function ms(x) { return isNum(x) ? (x < 10 ? x.toFixed(2) : x.toFixed(1)) + " ms" : "n/a"; }
// A duration in the units a person reads: "850 ms", "42 s", "3 h 12 min", "2 d 4 h".
function duration(msv) {
  if (!isNum(msv)) return "n/a";
  if (msv < 1000) return `${Math.round(msv)} ms`;
  const sec = msv / 1000;
  if (sec < 60) return `${sec < 10 ? (Math.floor(sec * 10) / 10).toFixed(1) : Math.floor(sec)} s`;
  const min = Math.floor(sec / 60);
  if (min < 60) { const r = Math.floor(sec - 60 * min); return r ? `${min} min ${r} s` : `${min} min`; }
  const hr = Math.floor(min / 60);
  if (hr < 24) { const r = min - 60 * hr; return r ? `${hr} h ${r} min` : `${hr} h`; }
  const d = Math.floor(hr / 24), r = hr - 24 * d;
  return r ? `${d} d ${r} h` : `${d} d`;
}
// Metric names as people say them: exact match on text routes is not "accuracy".
function metricLabel(name, task) {
  if (name === "exact_match" || (name === "accuracy" && task === "text")) return "exact match";
  return String(name || "").replace(/_/g, " ");
}
function when(ts) {
  if (!isNum(ts) && typeof ts !== "string") return "";
  const d = new Date(ts);
  return Number.isNaN(d.getTime()) ? String(ts) : d.toLocaleTimeString();
}

// ---- DOM helpers ------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") el.className = v; else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function badge(text, extra = "") {
  const t = String(text || "unknown");
  return h("span", { class: `badge ${t} ${extra}`.trim() }, t);
}

// ---- API --------------------------------------------------------------------------------------

async function getJSON(path) {
  const resp = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
  if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status}`);
  return resp.json();
}

async function optional(path) {
  try { return await getJSON(path); } catch (err) { return { __error: String(err.message || err) }; }
}

function candidateNames(route) {
  return (route.candidates || []).map((c) => (typeof c === "string" ? c : c.name));
}

function productionName(route) {
  const p = route.production;
  return typeof p === "string" ? p : (p && p.name) || "production";
}

async function load() {
  const { routes } = await getJSON("/v1/routes");
  return Promise.all(routes.map(async (route) => {
    const base = `/v1/routes/${encodeURIComponent(route.name)}`;
    const production = optional(`${base}/production`);
    const candidates = await Promise.all(candidateNames(route).map(async (name) => {
      const cbase = `${base}/candidates/${encodeURIComponent(name)}`;
      const [decision, scores, history] = await Promise.all(
        [optional(`${cbase}/decision`), optional(`${cbase}/scores`), optional(`${cbase}/history`)],
      );
      return { name, decision, scores, history };
    }));
    return { route, production: await production, candidates };
  }));
}

// ---- interval traces --------------------------------------------------------------------------

function historyItems(history) {
  if (Array.isArray(history)) return history;
  if (!history || typeof history !== "object") return [];
  for (const key of ["history", "changes", "decisions", "items"]) {
    if (Array.isArray(history[key])) return history[key];
  }
  return [];
}

function seriesFromScores(scores, metric) {
  // Accepts {series: {metric: [...]}} or {series: [{metric, ...}]} or {trace: ...}.
  const src = scores && (scores.series || scores.trace || scores.intervals);
  if (!src) return [];
  if (Array.isArray(src)) {
    return src.map((p) => (p && p.metrics ? { ...p.metrics[metric], as_of: p.as_of } : p))
      .filter((p) => p && (p.metric === undefined || p.metric === metric));
  }
  return Array.isArray(src[metric]) ? src[metric] : [];
}

function addPoint(trace, p) {
  if (!p || !isNum(p.n) || p.n <= 0 || !isNum(p.lower) || !isNum(p.upper)) return;
  trace.set(p.n, { n: p.n, estimate: p.estimate, lower: p.lower, upper: p.upper });
}

function traceFor(routeName, cand, metric) {
  const key = `${routeName}\u0000${cand.name}\u0000${metric}`;
  let trace = traces.get(key);
  if (!trace) { trace = new Map(); traces.set(key, trace); }
  for (const p of seriesFromScores(cand.scores, metric)) addPoint(trace, p);
  // only the evidence of the revision the decision is about
  const rid = cand.decision && cand.decision.revision && cand.decision.revision.id;
  for (const item of historyItems(cand.history)) {
    if (rid && item.revision && item.revision.id !== rid) continue;
    addPoint(trace, item.metrics && item.metrics[metric]);
  }
  const m = cand.decision && cand.decision.metrics && cand.decision.metrics[metric];
  addPoint(trace, m);
  let points = [...trace.values()].sort((a, b) => a.n - b.n);
  if (points.length > MAX_TRACE) {
    const step = points.length / MAX_TRACE;
    points = Array.from({ length: MAX_TRACE }, (_, i) => points[Math.floor(i * step)])
      .concat(points[points.length - 1]);
  }
  return points;
}

// ---- charts -----------------------------------------------------------------------------------

function scale(d0, d1, r0, r1) {
  const span = d1 - d0 || 1;
  return (v) => r0 + ((v - d0) / span) * (r1 - r0);
}

function niceTicks(lo, hi, count = 4) {
  const span = hi - lo;
  if (!(span > 0)) return [lo];
  const raw = span / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((st) => span / st <= count) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-12 && out.length < 20; v += step) {
    out.push(Math.abs(v) < step / 1e6 ? 0 : v);
  }
  return out;
}

// Fewer than three points seen (labels that came in one batch, or a page opened after they
// did): a line through them would invent how the interval narrowed. Show the one interval
// known now, on a value axis, and say why.
const MIN_TRACE = 3;

function singleInterval(p, threshold, metric) {
  const W = 520, H = 96, L = 12, R = 12;
  const vals = [p.lower, p.upper, 0].concat(isNum(threshold) ? [threshold] : []);
  let v0 = Math.min(...vals), v1 = Math.max(...vals);
  const pad = (v1 - v0) * 0.1 || 0.01;
  v0 -= pad; v1 += pad;
  const x = scale(v0, v1, L, W - R);
  const y = 34;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
    "aria-label": `${metric} interval now`, class: "interval-single" });
  for (const t of niceTicks(v0, v1, 5)) {
    svg.append(s("line", { x1: x(t), x2: x(t), y1: 12, y2: 56, class: t === 0 ? "zero" : "axis" }),
      s("text", { x: x(t), y: 72, "text-anchor": "middle" }, signed(t)));
  }
  svg.append(s("line", { x1: x(p.lower), x2: x(p.upper), y1: y, y2: y, class: "ci" }));
  if (isNum(p.estimate)) svg.append(s("circle", { cx: x(p.estimate), cy: y, r: 4, class: "dot" }));
  if (isNum(threshold)) {
    svg.append(s("line", { x1: x(threshold), x2: x(threshold), y1: 8, y2: 60, class: "thr" }),
      s("text", x(threshold) > W / 2
        ? { x: x(threshold) - 4, y: 10, "text-anchor": "end" }
        : { x: x(threshold) + 4, y: 10 }, `threshold ${signed(threshold)}`));
  }
  svg.append(s("text", { x: L, y: H - 6 },
    `[${signed(p.lower)}, ${signed(p.upper)}] at n = ${p.n} labelled pairs`));
  return h("div", { class: "interval-now", "data-n": p.n }, svg,
    h("div", { class: "note" }, `The interval has been seen at ${p.n} labelled pairs only `
      + "(labels that arrive in one batch give one interval, not a history): "
      + "it narrows as more labelled pairs arrive, and this chart then draws it against them."));
}

// The interval [lower, upper] narrowing as n grows, with the estimate and the threshold.
function intervalChart(points, threshold, metric) {
  const W = 520, H = 180, L = 52, R = 10, T = 10, B = 28;
  if (points.length === 0) return h("div", { class: "empty" }, `no ${metric} interval yet`);
  if (points.length < MIN_TRACE) return singleInterval(points[points.length - 1], threshold, metric);
  const ys = points.flatMap((p) => [p.lower, p.upper]).concat(isNum(threshold) ? [threshold] : []);
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  const pad = (y1 - y0) * 0.08 || 0.01;
  y0 -= pad; y1 += pad;
  const n0 = points[0].n, n1 = points[points.length - 1].n;
  const x = scale(n0, n1 === n0 ? n0 + 1 : n1, L, W - R);
  const y = scale(y0, y1, H - B, T);
  const upper = points.map((p) => `${x(p.n).toFixed(1)},${y(p.upper).toFixed(1)}`);
  const lower = points.map((p) => `${x(p.n).toFixed(1)},${y(p.lower).toFixed(1)}`).reverse();
  const est = points.filter((p) => isNum(p.estimate))
    .map((p) => `${x(p.n).toFixed(1)},${y(p.estimate).toFixed(1)}`);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
    "aria-label": `${metric} interval as samples grow`, class: "interval-chart" });
  for (const t of niceTicks(y0, y1)) {
    svg.append(s("line", { x1: L, x2: W - R, y1: y(t), y2: y(t), class: "axis" }),
      s("text", { x: L - 6, y: y(t) + 4, "text-anchor": "end" }, signed(t)));
  }
  if (points.length > 1) {
    svg.append(s("polygon", { points: upper.concat(lower).join(" "), class: "band" }));
    svg.append(s("polyline", { points: est.join(" "), class: "est" }));
  } else {
    const p = points[0];
    svg.append(s("line", { x1: x(p.n), x2: x(p.n), y1: y(p.lower), y2: y(p.upper), class: "ci" }));
  }
  for (const p of points.slice(-1)) {
    if (isNum(p.estimate)) svg.append(s("circle", { cx: x(p.n), cy: y(p.estimate), r: 3, class: "dot" }));
  }
  if (isNum(threshold)) {
    svg.append(s("line", { x1: L, x2: W - R, y1: y(threshold), y2: y(threshold), class: "thr" }),
      s("text", { x: W - R, y: y(threshold) - 4, "text-anchor": "end" }, `threshold ${signed(threshold)}`));
  }
  for (const p of points) {
    svg.append(s("circle", { cx: x(p.n), cy: y(p.upper), r: 1.5, class: "seen" }),
      s("circle", { cx: x(p.n), cy: y(p.lower), r: 1.5, class: "seen" }));
  }
  svg.append(s("text", { x: L, y: H - 8 }, `n = ${n0}`),
    s("text", { x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle" }, "labelled pairs"),
    s("text", { x: W - R, y: H - 8, "text-anchor": "end" }, `n = ${n1}`));
  return svg;
}

// Production vs candidate latency quantiles as paired horizontal bars.
function latencyChart(lat) {
  const qs = ["p50", "p90", "p99"];
  const prod = (lat && lat.production) || {}, cand = (lat && lat.candidate) || {};
  const vals = qs.flatMap((q) => [prod[q], cand[q]]).filter(isNum);
  if (vals.length === 0) return h("div", { class: "empty" }, "no latency data yet");
  const W = 520, rowH = 34, L = 40, R = 90, T = 6;
  const H = T + qs.length * rowH + 4;
  const x = scale(0, Math.max(...vals) * 1.05, L, W - R);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
    "aria-label": "latency quantiles", class: "latency-chart" });
  qs.forEach((q, i) => {
    const top = T + i * rowH;
    svg.append(s("text", { x: 0, y: top + 19 }, q));
    [[prod[q], "bar-prod", 0], [cand[q], "bar-cand", 14]].forEach(([v, cls, dy]) => {
      if (!isNum(v)) return;
      svg.append(s("rect", { x: L, y: top + dy, width: Math.max(1, x(v) - L), height: 12, class: cls }),
        s("text", { x: x(v) + 4, y: top + dy + 10 }, ms(v)));
    });
  });
  return svg;
}

// Production quality per window.
function qualityChart(series, metric) {
  const pts = (series || []).filter((p) => isNum(p.value));
  if (pts.length === 0) return h("div", { class: "empty" }, "no labelled production traffic yet");
  const W = 520, H = 150, L = 52, R = 10, T = 10, B = 28;
  const vs = pts.map((p) => p.value);
  let y0 = Math.min(...vs), y1 = Math.max(...vs);
  const pad = (y1 - y0) * 0.1 || Math.max(Math.abs(y1) * 0.05, 0.01);
  y0 -= pad; y1 += pad;
  const t0 = pts[0].start, t1 = pts[pts.length - 1].start;
  const x = pts.length > 1 ? scale(t0, t1, L, W - R) : () => (L + W - R) / 2;
  const y = scale(y0, y1, H - B, T);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
    "aria-label": `production ${metric} per window`, class: "quality-chart" });
  for (const t of niceTicks(y0, y1)) {
    svg.append(s("line", { x1: L, x2: W - R, y1: y(t), y2: y(t), class: "axis" }),
      s("text", { x: L - 6, y: y(t) + 4, "text-anchor": "end" }, fixed(t)));
  }
  if (pts.length > 1) {
    svg.append(s("polyline", { class: "prodline",
      points: pts.map((p) => `${x(p.start).toFixed(1)},${y(p.value).toFixed(1)}`).join(" ") }));
  }
  for (const p of pts) {
    svg.append(s("circle", { cx: x(p.start), cy: y(p.value), r: 3.5, class: "bar-prod" },
      s("title", {}, `${when(p.start)}: ${fixed(p.value)} (n=${p.n})`)));
  }
  svg.append(s("text", { x: L, y: H - 8 }, when(t0)),
    s("text", { x: W - R, y: H - 8, "text-anchor": "end" }, `${when(t1)} · n=${pts[pts.length - 1].n}`));
  return svg;
}

// ---- cards ------------------------------------------------------------------------------------

function metricsTable(decision, task) {
  const metrics = (decision && decision.metrics) || {};
  const names = Object.keys(metrics);
  if (names.length === 0) return h("div", { class: "empty" }, "no metrics yet");
  return h("table", { class: "metrics" },
    h("thead", {}, h("tr", {}, ["metric", "estimate", "lower", "upper", "n", "threshold", "status",
      "more needed (estimate)"]
      .map((t, i) => h("th", { class: (i > 0 && i < 6) || i === 7 ? "num" : "" }, t)))),
    h("tbody", {}, names.map((name) => {
      const m = metrics[name];
      return h("tr", { "data-metric": name },
        h("td", {}, metricLabel(name, task)),
        h("td", { class: "num estimate" }, signed(m.estimate)),
        h("td", { class: "num lower" }, signed(m.lower)),
        h("td", { class: "num upper" }, signed(m.upper)),
        h("td", { class: "num n" }, isNum(m.n) ? String(m.n) : "0"),
        h("td", { class: "num threshold" }, signed(m.threshold)),
        h("td", { class: "status" }, badge(m.status, "small")),
        h("td", { class: "num needed", title: neededTitle(m) }, neededText(m)));
    })));
}

// The estimated further pairs (or labelled pairs) an inconclusive metric needs.
function neededText(m) {
  const nd = m.needed;
  if (!nd) return "";
  if (!isNum(nd.more)) return "n/a";
  return `≈${Math.round(nd.more).toLocaleString("en")} ${nd.unit || "pairs"}`;
}

function neededTitle(m) {
  const nd = m.needed;
  if (!nd) return "";
  if (!isNum(nd.more)) return `cannot be estimated: ${nd.why || ""}`;
  return "an estimate at the current effect and variance, not a promise";
}

function primaryMetric(decision) {
  const names = Object.keys((decision && decision.metrics) || {});
  const guard = new Set(["error_rate", "timeout_rate", "agreement", "availability", "latency_p95_ratio", "latency_p99_ratio",
    "ttft_p99_ratio", "cost_ratio"]);
  return names.find((n) => !guard.has(n)) || names[0];
}

function ratesBlock(scores) {
  if (!scores || scores.__error) return h("div", { class: "empty" }, "scores unavailable");
  const rates = scores.rates || {};
  const agr = scores.agreement || {};
  const item = (label, value, field) => h("span", { "data-field": field }, `${label} `, h("b", { class: "num" }, value));
  return h("div", { class: "kv" },
    item("agreement", pct(agr.cand_mean !== undefined ? agr.cand_mean : agr.estimate), "agreement"),
    item("production errors", pct(rates.production && rates.production.error), "prod-error"),
    item("candidate errors", pct(rates.candidate && rates.candidate.error), "cand-error"),
    item("production timeouts", pct(rates.production && rates.production.timeout), "prod-timeout"),
    item("candidate timeouts", pct(rates.candidate && rates.candidate.timeout), "cand-timeout"),
    item("candidate without prediction", noPrediction(scores), "cand-no-prediction"));
}

function noPrediction(scores) {
  const o = scores.outcomes && scores.outcomes.candidate;
  if (!o || !o.no_prediction) return "—";
  const parts = Object.entries(o.no_prediction).map(([k, v]) => `${k} ${v}`);
  return parts.length ? parts.join(", ") : "none";
}

// The noise floor: production against itself, the yardstick for every candidate's figures.
function noiseFloor(decision) {
  const f = decision && decision.noise_floor;
  if (!f) return "";
  const rows = Object.entries(f.metrics || {}).map(([name, m]) => h("tr", { "data-floor-metric": name },
    h("td", {}, name),
    h("td", { class: "num estimate" }, signed(m.estimate)),
    h("td", { class: "num lower" }, signed(m.lower)),
    h("td", { class: "num upper" }, signed(m.upper)),
    h("td", { class: "num n" }, isNum(m.n) ? String(m.n) : "0")));
  return h("div", { class: "noise-floor", "data-noise": f.candidate },
    h("h4", {}, `noise floor (${f.candidate}: production against itself)`),
    h("div", { class: "kv" },
      h("span", { "data-field": "noise-pairs" }, "pairs ", h("b", { class: "num" }, String(f.pairs ?? 0))),
      h("span", { "data-field": "noise-disagreement" }, "disagreement ", h("b", { class: "num" }, pct(f.disagreement)))),
    rows.length ? h("table", { class: "metrics" },
      h("thead", {}, h("tr", {}, ["metric", "estimate", "lower", "upper", "n"].map((t, i) => h("th", { class: i > 0 ? "num" : "" }, t)))),
      h("tbody", {}, rows)) : "");
}

// The revision evidence is about: the candidate's deploy revision, else its version, else the id.
function revisionLabel(rev) {
  if (!rev) return "";
  const c = rev.candidate || {};
  return c.revision || (c.version ? `v${c.version}` : "") || rev.id || "";
}

function historyTable(history) {
  const items = historyItems(history);
  if (items.length === 0) return h("div", { class: "empty" }, "no verdict yet");
  return h("table", { class: "history" },
    h("thead", {}, h("tr", {}, ["when", "verdict", "pairs", "labelled", "why"].map((t) => h("th", {}, t)))),
    h("tbody", {}, items.slice().reverse().slice(0, 20).map((it) => h("tr", {},
      h("td", {}, when(it.as_of || it.ts || it.at)),
      h("td", {}, badge(it.verdict, "small")),
      h("td", { class: "num" }, isNum(it.pairs) ? String(it.pairs) : ""),
      h("td", { class: "num" }, isNum(it.labelled) ? String(it.labelled) : ""),
      h("td", {}, it.event === "revision_change"
        ? `new revision ${revisionLabel(it.revision)}: evidence starts afresh`
          + (it.previous ? ` (was ${revisionLabel(it.previous.revision)}: ${it.previous.verdict})` : "")
        : (it.reasons || [])[0] || "")))));
}

function candidateCard(routeName, prodName, cand) {
  const d = cand.decision || {};
  const card = h("div", { class: "card candidate", "data-candidate": cand.name });
  if (d.__error) {
    card.append(h("h3", {}, cand.name), h("div", { class: "empty" }, d.__error));
    return card;
  }
  const primary = primaryMetric(d);
  const task = cand.scores && cand.scores.task;
  const threshold = primary && d.metrics[primary] ? d.metrics[primary].threshold : undefined;
  card.append(
    h("h3", {}, h("span", {}, `${cand.name}`), badge(d.verdict, "verdict"),
      h("span", { class: "kv" }, `vs ${prodName} · as of ${when(d.as_of)}`)),
    h("div", { class: "kv" },
      h("span", { "data-field": "pairs" }, "pairs ", h("b", { class: "num" }, String(d.pairs ?? 0))),
      h("span", { "data-field": "labelled" }, "labelled ", h("b", { class: "num" }, String(d.labelled ?? 0))),
      h("span", { "data-field": "revision" }, "revision ", h("b", {}, revisionLabel(d.revision) || "—"))),
    h("ul", { class: "reasons" }, (d.reasons || []).map((r) => h("li", {}, r))),
    h("h4", {}, "metrics (candidate minus production; positive = candidate better)"),
    metricsTable(d, task),
    noiseFloor(d),
    h("div", { class: "grid2" },
      h("div", {},
        h("h4", {}, `${primary ? metricLabel(primary, task) : "primary metric"}: interval as labelled pairs grow`),
        primary ? intervalChart(traceFor(routeName, cand, primary), threshold, primary) : ""),
      h("div", {},
        h("h4", {}, "latency"),
        latencyChart(cand.scores && cand.scores.latency_ms),
        h("div", { class: "legend" }, h("span", {}, h("i", { class: "lg-prod" }), prodName),
          h("span", {}, h("i", { class: "lg-cand" }), cand.name)))),
    h("h4", {}, "agreement and errors"),
    ratesBlock(cand.scores),
    similarityBlock(cand.scores),
    llmBlock(cand.scores, prodName, cand.name),
    judgeBlock(cand.scores),
    classViews(cand.scores, prodName, cand.name),
    h("h4", {}, "decision history"),
    historyTable(cand.history));
  return card;
}

// ---- text routes: similarity of the two answers --------------------------------------------------

function similarityBlock(scores) {
  const sim = scores && scores.similarity;
  if (!sim) return "";
  return h("div", { class: "kv similarity" },
    h("span", { "data-field": "similarity" }, "mean similarity to production ",
      h("b", { class: "num" }, fixed(sim.mean))),
    h("span", { "data-field": "similarity-n" }, "answers compared ",
      h("b", { class: "num" }, String(sim.n ?? 0))),
    h("span", {}, "(difflib ratio: 1 = identical text)"));
}

// ---- openai routes: time to first token, inter-token latency, tokens, cost ---------------------

function llmBlock(scores, prodName, candName) {
  const llm = scores && scores.llm;
  if (!llm) return "";
  const t = llm.ttft_ms || {};
  const cost = llm.cost || {};
  const cell = (cls, text) => h("td", { class: `num ${cls}` }, text);
  const row = (side, name) => {
    const s = llm[side] || {};
    const q = t[side] || {};
    return h("tr", { "data-side": side },
      h("td", {}, name),
      cell("ttft-p50", ms(q.p50)), cell("ttft-p99", ms(q.p99)), cell("itl", ms(s.itl_ms)),
      cell("tokens-in", fixed(s.mean_tokens_in, 1)), cell("tokens-out", fixed(s.mean_tokens_out, 1)),
      cell("cost", cost[side] === null || cost[side] === undefined ? "n/a" : cost[side].toPrecision(3)),
      cell("counted", String(s.tokens_counted ?? 0)));
  };
  const r = t.ratio || {};
  return h("div", { class: "llm" },
    h("h4", {}, "time to first token, tokens and cost"),
    h("table", { class: "llm-table" },
      h("tr", {}, ...["", "TTFT p50", "TTFT p99", "ITL", "tokens in", "tokens out",
        "cost / request", "tokens counted"].map((c) => h("th", {}, c))),
      row("production", prodName), row("candidate", candName),
      h("tr", { "data-side": "ratio" },
        h("td", {}, "candidate / production"),
        cell("ttft-p50", fixed(r.p50)), cell("ttft-p99", fixed(r.p99)), h("td", {}, ""),
        h("td", {}, ""), h("td", {}, ""), cell("cost", fixed(cost.ratio)), h("td", {}, ""))),
    h("div", { class: "kv" }, "tokens in/out: mean per answer, from the servers' usage or counted ",
      "(tokens counted: answers without usage); cost from the models' configured prices"));
}

// ---- routes with a judge or an embedding similarity (docs/llm.md) --------------------------

function judgeBlock(scores) {
  const j = scores && scores.judge;
  const e = scores && scores.embedding_similarity;
  const a = (scores && scores.assessor) || {};
  if (!j && !e) return "";
  const kv = (field, label, value) => h("span", { "data-field": field }, label + " ",
    h("b", { class: "num" }, value));
  const parts = [];
  if (j) {
    const m = j.metric || {};
    parts.push(h("div", { class: "kv judge" },
      kv("judge-estimate", "judge: wins − losses", signed(m.estimate)),
      kv("judge-interval", "interval", `[${signed(m.lower)}, ${signed(m.upper)}]`),
      kv("judge-wins", "wins", String(j.wins)),
      kv("judge-ties", "ties", String(j.ties)),
      kv("judge-losses", "losses", String(j.losses)),
      kv("judge-unparseable", "unparseable", String(j.unparseable)),
      kv("judge-inconsistent", "position-inconsistent", String(j.inconsistent)),
      kv("judge-failed", "failed", String(j.failed)),
      kv("judge-calls", "calls", String(j.calls)),
      a.judge ? kv("judge-budget", "budget left",
        a.judge.budget_left === null ? "no limit" : String(a.judge.budget_left)) : "",
      a.judge ? kv("judge-breaker", "breaker", a.judge.breaker) : ""));
  }
  if (e) {
    parts.push(h("div", { class: "kv embedding" },
      kv("embedding-mean", "mean embedding similarity", fixed(e.mean)),
      kv("embedding-n", "answers compared", String(e.n ?? 0)),
      kv("embedding-failed", "failed", String(e.failed ?? 0)),
      h("span", {}, "(cosine of the answers' embeddings)")));
  }
  return h("div", { class: "assessed" }, h("h4", {}, "judge and embedding similarity"), ...parts);
}

// ---- classification routes: per-class views -----------------------------------------------------

function className(name, views) {
  if (name === views.other) return "other";
  if (name === views.no_prediction) return "no prediction";
  return name;
}

function confusionTable(views, side, title) {
  const conf = views.confusion || {};
  const matrix = conf[side] || [];
  const cols = (conf.columns || []).filter((c, j) => side === "candidate" || c !== views.no_prediction);
  return h("div", {},
    h("div", { class: "legend" }, `${title}: rows are labels, columns predictions`),
    h("table", { class: "confusion", "data-side": side },
      h("thead", {}, h("tr", {}, h("th", {}, "label \\ predicted"),
        cols.map((c) => h("th", { class: "num" }, className(c, views))))),
      h("tbody", {}, (conf.labels || []).map((y, i) => h("tr", { "data-label": y },
        h("th", {}, className(y, views)),
        cols.map((c, j) => h("td", { class: `num${y === c && y !== views.other ? " diag" : ""}` },
          String((matrix[i] || [])[j] ?? 0))))))));
}

function classViews(scores, prodName, candName) {
  const v = scores && scores.classes;
  if (!v) return "";
  const rows = v.per_class || [];
  const interval = v.interval || {};
  const cell = (x) => h("td", { class: "num" }, fixed(x));
  return h("div", { class: "class-views" },
    h("h4", {}, "per class (same labelled pairs)"),
    rows.length === 0 ? h("div", { class: "empty" }, "no labelled pairs yet") : h("table", { class: "per-class" },
      h("thead", {}, h("tr", {}, ["class", "support",
        `${prodName} P`, "R", "F1", `${candName} P`, "R", "F1", "recall diff", "interval"]
        .map((t, i) => h("th", { class: i > 0 ? "num" : "" }, t)))),
      h("tbody", {}, rows.map((r) => h("tr", { "data-class": r.class },
        h("td", {}, r.class),
        h("td", { class: "num support" }, String(r.support)),
        cell(r.production.precision), cell(r.production.recall), cell(r.production.f1),
        cell(r.candidate.precision), cell(r.candidate.recall), cell(r.candidate.f1),
        h("td", { class: "num recall-diff" }, signed(r.recall_diff.estimate)),
        h("td", { class: "num recall-interval" },
          `[${signed(r.recall_diff.lower)}, ${signed(r.recall_diff.upper)}]`))))),
    h("div", { class: "legend" },
      `P, R, F1: precision, recall, F1 of each model. Recall diff: candidate minus production on the `
      + `requests labelled with the class; the intervals of all classes hold together at `
      + `${pct(1 - (interval.alpha ?? 0.05))} (Bonferroni over ${v.max_classes} classes).`
      + (v.untracked ? ` ${v.untracked} labelled instances had a class beyond the ${v.max_classes} tracked: counted under "other".` : "")),
    h("div", { class: "grid2" },
      confusionTable(v, "production", prodName),
      confusionTable(v, "candidate", candName)));
}

function driftRows(drift) {
  const fields = drift && typeof drift === "object" && !Array.isArray(drift)
    ? Object.entries(drift)
    : (Array.isArray(drift) ? drift.map((f) => [f.field, f]) : []);
  return fields.map(([name, f]) => h("tr", { "data-drift-field": name },
    h("td", {}, h("code", {}, name)),
    h("td", {}, badge(f.state, "small")),
    h("td", { class: "num psi" }, fixed(f.psi)),
    h("td", { class: "num js" }, fixed(f.js)),
    h("td", { class: "num" }, isNum(f.n) ? String(f.n) : ""),
    h("td", { class: "num" }, isNum(f.reference_n) ? String(f.reference_n) : ""),
    h("td", {}, f.kind === "embedding" ? embeddingNote(f) : psiBar(f.psi))));
}

// An embedding drift field (drift.embedding): no PSI; its MMD², p-value and centroid shift.
function embeddingNote(f) {
  const parts = [];
  if (isNum(f.mmd2)) parts.push(`MMD² ${f.mmd2.toPrecision(2)}`);
  if (isNum(f.p_value)) parts.push(`p ${f.p_value.toPrecision(2)}`);
  if (isNum(f.centroid_shift)) parts.push(`centroid shift ${fixed(f.centroid_shift)}`);
  return h("span", { class: "legend embedding", "data-field": "embedding" }, parts.join(" · "));
}

function psiBar(psi) {
  if (!isNum(psi)) return "";
  const W = 120, max = 0.5;
  const x = scale(0, max, 0, W);
  const cls = psi > 0.25 ? "fail" : psi >= 0.1 ? "hold" : "pass";
  const color = { pass: "var(--promote)", hold: "var(--hold)", fail: "var(--reject)" }[cls];
  return s("svg", { viewBox: `0 0 ${W} 10`, width: W, height: 10, class: "psi-bar" },
    s("rect", { x: 0, y: 2, width: W, height: 6, fill: "#eef0f3" }),
    s("rect", { x: 0, y: 2, width: Math.min(W, x(psi)), height: 6, fill: color }),
    s("line", { x1: x(0.1), x2: x(0.1), y1: 0, y2: 10, class: "axis" }),
    s("line", { x1: x(0.25), x2: x(0.25), y1: 0, y2: 10, class: "thr" }));
}

function productionCard(route, prod) {
  const name = productionName(route);
  const card = h("div", { class: "card production", "data-production": name });
  card.append(h("h3", {}, h("span", {}, `production: ${name}`)));
  if (!prod || prod.__error) {
    card.append(h("div", { class: "empty" }, (prod && prod.__error) || "no production data"));
    return card;
  }
  const deg = prod.degradation || {};
  const delay = prod.label_delay_ms || {};
  const counts = prod.counts || {};
  card.querySelector("h3").append(badge(deg.state, "degradation"));
  card.append(
    h("div", { class: "kv" },
      h("span", {}, "requests ", h("b", { class: "num" }, String(counts.requests ?? 0))),
      h("span", {}, "labelled ", h("b", { class: "num" }, String(counts.labelled ?? 0))),
      h("span", {}, `${metricLabel(prod.metric || "quality", prod.task)} now `,
        h("b", { class: "num", "data-field": "quality-now" }, fixed(lastValue(prod.quality)))),
      h("span", {}, "worse than reference by ", h("b", { class: "num" }, signed(deg.estimate)),
        ` [${signed(deg.lower)}, ${signed(deg.upper)}]`),
      h("span", {}, "label delay p50 / p90 ",
        h("b", { class: "num", "data-field": "label-delay" }, `${duration(delay.p50)} / ${duration(delay.p90)}`)),
      h("span", { title: "labels that matched no request seen so far (label by the x-request-id the proxy returned)" },
        "labels waiting for their pair ",
        h("b", { class: "num", "data-field": "labels-waiting" },
          String((prod.labels && prod.labels.waiting) ?? 0)))),
    deg.note ? h("div", { class: "reasons" }, deg.note) : "",
    h("div", { class: "grid2" },
      h("div", {}, h("h4", {}, `${metricLabel(prod.metric || "quality", prod.task)} per ${prod.window || "window"}`),
        qualityChart(prod.quality, prod.metric || "quality")),
      h("div", {}, h("h4", {}, "input drift (PSI against the reference)"),
        h("table", { class: "drift" },
          h("thead", {}, h("tr", {}, ["field", "state", "PSI", "JS", "n", "ref n", ""]
            .map((t, i) => h("th", { class: i >= 2 && i <= 5 ? "num" : "" }, t)))),
          h("tbody", {}, driftRows(prod.drift))),
        driftAutoNote(prod.drift_auto))));
  return card;
}

function driftAutoNote(auto) {
  if (!auto || !auto.enabled) return "";
  const parts = [`automatic: ${auto.fields.length} of at most ${auto.max_fields} input fields tracked`];
  if (auto.untracked_values) {
    parts.push(`${auto.untracked_values} values of further fields counted, not tracked`
      + (auto.untracked_examples.length ? ` (e.g. ${auto.untracked_examples.slice(0, 3).join(", ")})` : ""));
  }
  if (auto.too_deep_values) parts.push(`${auto.too_deep_values} values nested too deep`);
  return h("div", { class: "legend drift-auto", "data-field": "drift-auto" }, parts.join("; "));
}

function lastValue(series) {
  const pts = (series || []).filter((p) => isNum(p.value));
  return pts.length ? pts[pts.length - 1].value : undefined;
}

function render(data) {
  const root = document.getElementById("routes");
  const sections = data.map(({ route, production, candidates }) => h("section",
    { class: "route", "data-route": route.name },
    h("h2", {}, route.name,
      h("span", { class: "meta" }, [route.protocol, route.task].filter(Boolean).join(" · "))),
    candidates.map((c) => candidateCard(route.name, productionName(route), c)),
    productionCard(route, production)));
  root.replaceChildren(...(sections.length ? sections : [h("div", { class: "empty" }, "no routes configured")]));
  root.setAttribute("aria-busy", "false");
}

// ---- polling ----------------------------------------------------------------------------------

let polls = 0;

async function tick() {
  const status = document.getElementById("status");
  try {
    const data = await load();
    render(data);
    polls += 1;
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    status.className = "status";
    document.body.dataset.polls = String(polls);
  } catch (err) {
    status.textContent = `cannot reach the API: ${err.message || err}`;
    status.className = "status error";
  } finally {
    setTimeout(tick, POLL_MS);
  }
}

tick();
