// The live page: polls the agent's JSON API every second and draws each device's last
// 15 minutes at sample resolution on canvases. No library, no request to any other origin.
"use strict";

const COLORS = { bw_in: "#1565c0", bw_out: "#6a1b9a", pps: "#ef6c00", conntrack: "#00838f", linklocal: "#c62828" };
const NAMES = {
  bw_in: "inbound bandwidth", bw_out: "outbound bandwidth", pps: "packets per second",
  conntrack: "connection tracking", linklocal: "link-local (DNS, IMDS, Time Sync)",
};

const $ = (sel, root = document) => root.querySelector(sel);
function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

async function get(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

function fmt(n) {
  if (n === null || n === undefined) return "—";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (n >= 1e4) return (n / 1e3).toFixed(0) + "k";
  return String(Math.round(n * 10) / 10);
}

function time(ms) {
  return new Date(ms).toISOString().slice(11, 19);
}

// A line (or bar) chart of several series over shared times. Sets data-points for tests.
function chart(canvas, times, series, opts = {}) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 600, h = canvas.clientHeight || 180;
  canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  const left = 44, right = 8, top = 8, bottom = 20;
  const pw = w - left - right, ph = h - top - bottom;
  const t0 = times.length ? times[0] : 0, t1 = times.length ? times[times.length - 1] : 1;
  let max = Math.max(opts.min || 1, opts.limit || 0);
  for (const s of series) for (const v of s.values) if (v !== null && v > max) max = v;
  max *= 1.1;
  const x = (t) => left + (t1 > t0 ? (t - t0) / (t1 - t0) : 1) * pw;
  const y = (v) => top + ph - (v / max) * ph;
  g.font = "11px system-ui, sans-serif"; g.fillStyle = "#5d6b7a"; g.strokeStyle = "#dde2e8"; g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = (max / 4) * i, yy = y(v);
    g.beginPath(); g.moveTo(left, yy); g.lineTo(left + pw, yy); g.stroke();
    g.fillText(fmt(v), 2, yy + 4);
  }
  if (times.length) { g.fillText(time(t0), left, h - 4); g.fillText(time(t1), left + pw - 48, h - 4); }
  if (opts.limit) {
    // The budget line: where EC2 starts dropping.
    g.save(); g.setLineDash([5, 4]); g.strokeStyle = "#c62828"; g.lineWidth = 1.2;
    g.beginPath(); g.moveTo(left, y(opts.limit)); g.lineTo(left + pw, y(opts.limit)); g.stroke(); g.restore();
    g.fillStyle = "#c62828"; g.fillText(opts.limit + "/s budget", left + 4, y(opts.limit) - 4);
  }
  // Legend, top right, for named series.
  let lx = left + pw;
  for (const s of [...series].reverse()) {
    if (!s.name) continue;
    const tw = g.measureText(s.name).width;
    lx -= tw + 18;
    g.fillStyle = s.color; g.fillRect(lx, top + 2, 10, 3);
    g.fillStyle = "#1d232a"; g.fillText(s.name, lx + 13, top + 7);
  }
  let drawn = 0;
  for (const s of series) {
    g.strokeStyle = s.color; g.fillStyle = s.color; g.lineWidth = 1.6;
    if (opts.bars) {
      const bw = Math.max(1, pw / Math.max(times.length, 1));
      s.values.forEach((v, i) => { if (v > 0) g.fillRect(x(times[i]) - bw / 2, y(v), bw, top + ph - y(v)); });
    } else {
      g.beginPath(); let pen = false;
      s.values.forEach((v, i) => {
        if (v === null) { pen = false; return; }
        if (pen) g.lineTo(x(times[i]), y(v)); else { g.moveTo(x(times[i]), y(v)); pen = true; }
      });
      g.stroke();
    }
    drawn += s.values.length;
  }
  canvas.dataset.points = String(drawn);
}

function deviceCard(d) {
  let card = document.getElementById("dev-" + d.device);
  if (!card) {
    card = el("section", { class: "device", id: "dev-" + d.device });
    card.append(el("h2"), el("div", { class: "table-wrap" }));
    const charts = el("div", { class: "charts" });
    const pps = el("figure", { class: "wide" });
    pps.append(el("canvas", { "data-kind": "pps" }), el("figcaption", {}, "Packets per second queued or dropped, per allowance (15 minutes, 1 s resolution)"));
    const thr = el("figure");
    thr.append(el("canvas", { "data-kind": "throttled" }), el("figcaption", {}, "Seconds throttled per sampling interval"));
    const ct = el("figure");
    ct.append(el("canvas", { "data-kind": "conntrack" }), el("figcaption", {}, "Connections that can still be tracked (conntrack available)"));
    const ll = el("figure", { class: "wide", hidden: "" });
    ll.append(el("canvas", { "data-kind": "linklocal" }), el("figcaption", {}, "Packets per second to link-local services (DNS resolver, IMDS, Time Sync) against the 1024/s budget"));
    charts.append(pps, thr, ct, ll);
    card.append(charts, el("p", { class: "bursts" }));
    $("#devices").append(card);
  }
  const h2 = $("h2", card);
  h2.textContent = d.device + " ";
  const info = [d.driver && (d.driver + " " + d.driver_version), d.eni, d.bus_info].filter(Boolean).join(" · ");
  h2.append(el("small", {}, info));
  const table = el("table");
  const head = el("tr");
  for (const c of ["allowance", "pkts/s now", "throttled 1m", "throttled 15m", "total packets"]) head.append(el("th", {}, c));
  table.append(head);
  for (const a of d.allowances) {
    if (!a.supported) continue;
    const row = el("tr", { class: a.pps > 0 ? "hot" : a.throttled_1m > 0 ? "warm" : "" });
    row.append(el("td", {}, NAMES[a.allowance]), el("td", {}, fmt(a.pps)), el("td", {}, a.throttled_1m + " s"),
      el("td", {}, a.throttled_15m + " s"), el("td", {}, fmt(a.packets_total)));
    table.append(row);
  }
  if (d.conntrack_available !== null) {
    const row = el("tr");
    row.append(el("td", {}, "conntrack available"), el("td", {}, fmt(d.conntrack_available)), el("td"), el("td"), el("td"));
    table.append(row);
  }
  const wrap = $(".table-wrap", card);
  wrap.replaceChildren(table);
  return card;
}

function banner(alerts) {
  const b = $("#banner");
  const active = alerts.filter((a) => a.state !== "resolved");
  if (!active.length) { b.hidden = true; b.replaceChildren(); return; }
  const firing = active.some((a) => a.state === "firing");
  b.className = firing ? "firing" : "pending";
  b.hidden = false;
  b.replaceChildren(el("span", {}, (firing ? "Alerts firing" : "Alerts pending") + " on this node"));
  const list = el("ul");
  for (const a of active) {
    const on = a.device ? " on " + a.device : a.workload !== undefined ? " for " + (a.workload ? `${a.namespace}/${a.workload}` : "pods without attribution") : "";
    const item = el("li", {}, `${a.state.toUpperCase()} ${a.name} (${a.severity})${on}: ${a.description} `);
    const link = el("a", { href: a.runbook_url, style: "color:#fff" }, "runbook");
    item.append(link);
    list.append(item);
  }
  b.append(list);
}

async function refresh() {
  const [status, devices, alerts] = await Promise.all([get("api/v1/status"), get("api/v1/devices"), get("api/v1/alerts")]);
  $("#node").textContent = `${status.node} · ${status.source} · every ${status.interval_seconds} s`;
  const summary = $("#summary");
  summary.textContent = status.summary;
  summary.classList.toggle("throttled", status.throttled_now);
  banner(alerts.alerts);
  for (const d of devices) {
    const card = deviceCard(d);
    const hist = await get("api/v1/history?device=" + encodeURIComponent(d.device));
    const supported = d.allowances.filter((a) => a.supported).map((a) => a.allowance);
    chart($("canvas[data-kind=pps]", card), hist.t,
      supported.map((a) => ({ name: a, color: COLORS[a], values: hist.pps[a] })));
    chart($("canvas[data-kind=throttled]", card), hist.t,
      supported.map((a) => ({ color: COLORS[a], values: hist.throttled[a] })), { bars: true });
    chart($("canvas[data-kind=conntrack]", card), hist.t, [{ color: COLORS.conntrack, values: hist.conntrack_available }]);
    if (hist.linklocal_pps.some((v) => v !== null)) {
      const canvas = $("canvas[data-kind=linklocal]", card);
      canvas.parentElement.hidden = false;
      chart(canvas, hist.t, [{ name: "link-local", color: COLORS.linklocal, values: hist.linklocal_pps }], { limit: 1024 });
    }
    const bursts = await get("api/v1/bursts?device=" + encodeURIComponent(d.device));
    const last = bursts.bursts.slice(-5).reverse()
      .map((b) => `${b.allowance} ${b.start.slice(11, 19)}–${b.end.slice(11, 19)} (${b.duration_seconds} s, ${b.packets} packets, peak ${b.peak_pps}/s)`);
    $(".bursts", card).textContent = last.length ? "Recent bursts: " + last.join("; ") : "No burst in the history.";
  }
  await dnsClients();
  $("#footer").textContent = `enawatch ${status.version} (${status.revision}) · ${status.samples} samples`;
  document.body.dataset.updated = String(Date.now());
}

// The busiest DNS clients on this node, when the agent runs the DNS analysis.
async function dnsClients() {
  const dns = await get("api/v1/dns");
  let section = $("#dns");
  if (!dns.enabled) { if (section) section.remove(); return; }
  if (!section) {
    section = el("section", { class: "device", id: "dns" });
    // Who is hurt comes first: it is what someone paged for DNS failures looks for.
    $("#devices").before(section);
  }
  const table = el("table");
  const head = el("tr");
  for (const c of ["DNS client", "queries/s", "NXDOMAIN", "search-path", "top names"]) head.append(el("th", {}, c));
  table.append(head);
  for (const c of dns.report.clients.slice(0, 10)) {
    const a = c.amplification;
    const row = el("tr", { class: a && a.factor >= 2 ? "warm" : "" });
    row.append(el("td", {}, c.pod ? `${c.client} (${c.pod.namespace}/${c.pod.pod})` : c.client), el("td", {}, fmt(c.qps_1m)), el("td", {}, Math.round(c.nxdomain_ratio * 100) + " %"),
      el("td", {}, a ? `x${a.factor} (ndots:${a.recommended_ndots} saves ${a.would_save})` : "—"),
      el("td", {}, c.top_names.slice(0, 3).map((n) => n[0]).join(", ")));
    table.append(row);
  }
  // Who is hurt: the workloads whose lookups failed, and whether throttling did it.
  const hurt = el("table", { class: "hurt" });
  const hurtHead = el("tr");
  for (const c of ["workload", "lookups", "failed", "timeouts", "SERVFAIL", "during throttling"]) hurtHead.append(el("th", {}, c));
  hurt.append(hurtHead);
  for (const w of dns.report.who_is_hurt.slice(0, 10)) {
    const failed = w.timeouts + w.servfail + w.refused;
    const name = w.namespace ? `${w.namespace}/${w.workload}` : (w.workload || "the node (not a pod)");
    const row = el("tr", { class: w.throttled > 0 ? "hot" : failed > 0 ? "warm" : "" });
    row.append(el("td", {}, name), el("td", {}, String(w.queries)), el("td", {}, String(failed)),
      el("td", {}, String(w.timeouts)), el("td", {}, String(w.servfail)), el("td", {}, String(w.throttled)));
    hurt.append(row);
  }
  section.replaceChildren(el("h2", {}, "Who is hurt: DNS lookups by workload"), el("div", { class: "table-wrap hurt-wrap" }),
    el("h2", {}, "DNS clients"), el("div", { class: "table-wrap clients-wrap" }));
  $(".hurt-wrap", section).append(hurt);
  $(".clients-wrap", section).append(table);
}

async function loop() {
  try { await refresh(); } catch (e) { $("#summary").textContent = "Cannot reach the agent: " + e.message; }
  setTimeout(loop, 1000);
}
loop();
