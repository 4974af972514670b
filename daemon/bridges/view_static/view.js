// medacq live view: plain JS, no dependencies. Panels are built from the server's panel
// specs (which come from stream descriptors); data arrives as binary WebSocket messages:
// u32 LE header length, JSON header, padding to 4 bytes, payload.
"use strict";

const S = {
  ws: null, panels: new Map(), cards: new Map(), reqs: new Map(), nextReq: 1,
  specsKey: "", connected: false, status: null,
};

// ---------------------------------------------------------------- helpers
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v);
  }
  for (const c of kids) if (c != null) e.append(c);
  return e;
}
function fmt(v, digits = 3) {
  if (v === null || v === undefined || Number.isNaN(v)) return "—";
  if (typeof v !== "number") return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(2);
  return Number(v.toPrecision(digits)).toString();
}
function fmtUs(v) { return v == null ? "—" : (v >= 1000 ? `${(v / 1000).toFixed(1)} ms` : `${v.toFixed(0)} µs`); }
function fmtMs(v) { return v == null ? "—" : `${v.toFixed(1)} ms`; }
function toast(text, ok) {
  const t = el("div", { class: "toast " + (ok ? "ok" : "bad"), text });
  document.getElementById("toasts").append(t);
  setTimeout(() => t.remove(), ok ? 4000 : 8000);
}
function niceScale(x) {  // a 1-2-5 step at or above x
  if (!(x > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(x)));
  for (const m of [1, 2, 5, 10]) if (m * p >= x) return m * p;
  return 10 * p;
}

// ---------------------------------------------------------------- colour maps
const CMAPS = {
  gray: [[0, [0, 0, 0]], [1, [255, 255, 255]]],
  rdbu: [[0, [33, 102, 172]], [0.25, [103, 169, 207]], [0.5, [247, 247, 247]], [0.75, [239, 138, 98]], [1, [178, 24, 43]]],
  viridis: [[0, [68, 1, 84]], [0.25, [59, 82, 139]], [0.5, [33, 145, 140]], [0.75, [94, 201, 98]], [1, [253, 231, 37]]],
  hot: [[0, [0, 0, 0]], [0.4, [230, 0, 0]], [0.8, [255, 210, 0]], [1, [255, 255, 255]]],
};
const LUTS = {};
function lut(name) {
  if (LUTS[name]) return LUTS[name];
  const stops = CMAPS[name] || CMAPS.gray;
  const out = new Uint32Array(256);
  const rgba = new Uint8Array(out.buffer);
  for (let i = 0; i < 256; i++) {
    const x = i === 0 ? 0 : (i - 1) / 254;
    let j = 0;
    while (j < stops.length - 2 && x > stops[j + 1][0]) j++;
    const [x0, c0] = stops[j], [x1, c1] = stops[j + 1];
    const f = Math.min(1, Math.max(0, (x - x0) / (x1 - x0 || 1)));
    for (let k = 0; k < 3; k++) rgba[4 * i + k] = Math.round(c0[k] + f * (c1[k] - c0[k]));
    rgba[4 * i + 3] = 255;
  }
  rgba[0] = 40; rgba[1] = 40; rgba[2] = 40; rgba[3] = 255;  // index 0: no data
  return (LUTS[name] = out);
}
function cssColour(name, x) {
  const l = new Uint8Array(lut(name).buffer);
  const i = 1 + Math.round(Math.min(1, Math.max(0, x)) * 254);
  return `rgb(${l[4 * i]},${l[4 * i + 1]},${l[4 * i + 2]})`;
}

// ---------------------------------------------------------------- WebSocket
// The token came once in the address (?token=...); the server answered with an HttpOnly cookie
// that every later request of this page (script, WebSocket) carries. Drop it from the address bar
// and the history.
if (new URLSearchParams(location.search).has("token")) history.replaceState(null, "", location.pathname);

function connect() {
  const ws = new WebSocket(`ws://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  S.ws = ws;
  ws.onopen = () => { S.connected = true; setBadge("conn", "connected", true); };
  ws.onclose = async () => {
    S.connected = false;
    let denied = false;
    try { denied = (await fetch("/api/state", { method: "GET", cache: "no-store" })).status === 401; } catch (e) { /* server down */ }
    if (denied) {  // the view restarted with a new token: retrying cannot help
      setBadge("conn", "token no longer valid — open the address medacq view printed", false);
      return;
    }
    setBadge("conn", "disconnected — retrying", false);
    setTimeout(connect, 1000);
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") onJson(JSON.parse(ev.data));
    else onBinary(ev.data);
  };
}
function send(obj) { if (S.ws && S.ws.readyState === 1) S.ws.send(JSON.stringify(obj)); }
function setBadge(id, text, ok) {
  const b = document.getElementById(id);
  b.textContent = text;
  b.className = "badge " + (ok ? "good" : "bad");
}

function onJson(m) {
  if (m.type === "status") onStatus(m);
  else if (m.type === "panels") buildPanels(m.panels);
  else if (m.type === "reply") {
    const r = S.reqs.get(m.req);
    S.reqs.delete(m.req);
    const label = r ? r.label : "request";
    if (r && r.button) r.button.disabled = false;
    toast(m.ok ? `${label}: ok ${m.result ? JSON.stringify(m.result).slice(0, 120) : ""}` : `${label}: ${m.error}`, m.ok);
    document.body.dataset.lastReply = JSON.stringify({ label, ok: m.ok });
  }
}

function onBinary(buf) {
  const tRecv = performance.now();
  const n = new DataView(buf).getUint32(0, true);
  const h = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
  const off = 4 + n + ((4 - ((4 + n) % 4)) % 4);
  const p = S.panels.get(h.panel);
  if (!p) { send({ op: "drawn", panel: h.panel, v: h.v }); return; }
  p.pending = { h, buf, off, tRecv };
  if (!p.scheduled) {
    p.scheduled = true;
    requestAnimationFrame(() => drawPending(p));
  }
}

function drawPending(p) {
  p.scheduled = false;
  const m = p.pending;
  if (!m) return;
  p.pending = null;
  try {
    if (m.h.kind === "trace") drawTrace(p, m.h, new Float32Array(m.buf, m.off));
    else if (m.h.kind === "image") drawImage(p, m.h, new Uint8Array(m.buf, m.off));
    else if (m.h.kind === "scalar") drawScalar(p, m.h, new Float32Array(m.buf, m.off));
    else if (m.h.kind === "profile") drawProfile(p, m.h, new Float32Array(m.buf, m.off));
    else if (m.h.kind === "overlay") drawOverlay(p, m.h, new Uint8Array(m.buf, m.off));
    p.updates++;
    p.el.dataset.updates = p.updates;
    p.el.dataset.seq = m.h.seq;
  } catch (e) {
    p.info.textContent = "draw error: " + e;
  }
  send({ op: "drawn", panel: m.h.panel, v: m.h.v, draw_ms: performance.now() - m.tRecv });
}

// ---------------------------------------------------------------- layout
function card(source) {
  let c = S.cards.get(source);
  if (c) return c;
  const buttons = el("span", { class: "buttons" });
  const stateB = el("span", { class: "badge" , text: "?" });
  const head = el("div", { class: "card-head" }, el("h2", { text: source }), el("span", { class: "kind" }), stateB, buttons);
  const grid = el("div", { class: "grid" });
  const root = el("section", { class: "card", dataset: { device: source } }, head, grid);
  document.getElementById("devices").append(root);
  c = { root, grid, buttons, stateB, kind: head.querySelector(".kind"), buttonsKey: "" };
  S.cards.set(source, c);
  return c;
}

function buildPanels(specs) {
  const key = JSON.stringify(specs);
  if (key === S.specsKey) return;
  S.specsKey = key;
  const seen = new Set();
  for (const spec of specs) {
    seen.add(spec.id);
    const old = S.panels.get(spec.id);
    const sk = JSON.stringify(spec);
    if (old && old.specKey === sk) continue;
    if (old) old.el.remove();
    S.panels.set(spec.id, makePanel(spec, sk));
  }
  for (const [id, p] of S.panels) if (!seen.has(id)) { p.el.remove(); S.panels.delete(id); }
}

function makePanel(spec, specKey) {
  const title = el("div", { class: "panel-title" },
    el("b", { text: spec.topic }),
    el("span", { class: "dim", text: ` ${spec.modality || ""} ${spec.kind} ${JSON.stringify(spec.shape)} ${spec.axes.join("×")} ${spec.units ? "[" + spec.units + "]" : ""}` }));
  const info = el("div", { class: "info dim" });
  const root = el("div", { class: `panel ${spec.kind}`, dataset: { topic: spec.topic, kind: spec.kind, updates: 0 } }, title);
  const p = { spec, specKey, el: root, info, updates: 0, pending: null, scheduled: false };
  if (spec.kind === "scalar") {
    p.values = el("div", { class: "values" });
    p.canvas = el("canvas", { width: 360, height: 60, class: "spark" });
    root.append(p.values, p.canvas);
  } else {
    const h = spec.kind === "trace" ? Math.min(520, Math.max(160, 26 * Math.min(spec.channels || 1, 64))) : (spec.kind === "profile" ? 180 : 300);
    const w = spec.kind === "image" || spec.kind === "overlay" ? 380 : 560;
    p.canvas = el("canvas", { width: w, height: h });
    root.append(p.canvas);
    if (spec.kind === "image" || spec.kind === "overlay") root.append(windowControls(p));
  }
  root.append(info);
  p.ctx = p.canvas.getContext("2d");
  card(spec.source).grid.append(root);
  return p;
}

function windowControls(p) {
  const lo = el("input", { type: "number", step: "any", title: "window low", class: "wl" });
  const hi = el("input", { type: "number", step: "any", title: "window high", class: "wl" });
  const apply = el("button", { text: "set window", class: "small", onclick: () => {
    const a = parseFloat(lo.value), b = parseFloat(hi.value);
    if (Number.isFinite(a) && Number.isFinite(b) && b > a) send({ op: "set", panel: p.spec.id, window: [a, b] });
  } });
  const auto = el("button", { text: "auto", class: "small", onclick: () => send({ op: "set", panel: p.spec.id, window: null }) });
  p.lo = lo; p.hi = hi;
  return el("div", { class: "wlrow" }, el("span", { class: "dim", text: "window/level " }), lo, hi, apply, auto);
}

// ---------------------------------------------------------------- drawing
function drawTrace(p, h, data) {
  const ctx = p.ctx, W = p.canvas.width, H = p.canvas.height;
  const C = h.channels, N = h.columns, gutter = 92, plotW = W - gutter - 6;
  ctx.fillStyle = "#101418"; ctx.fillRect(0, 0, W, H);
  const laneH = (H - 14) / C;
  const names = p.spec.channel_names || [];
  ctx.font = "11px system-ui, sans-serif";
  for (let c = 0; c < C; c++) {
    const mins = data.subarray(c * N, (c + 1) * N), maxs = data.subarray((C + c) * N, (C + c + 1) * N);
    let lo = Infinity, hi = -Infinity;
    for (let i = 0; i < N; i++) { const a = mins[i], b = maxs[i]; if (a === a) { if (a < lo) lo = a; if (b > hi) hi = b; } }
    const y0 = c * laneH;
    ctx.fillStyle = c % 2 ? "#151b21" : "#12171c"; ctx.fillRect(gutter, y0, plotW, laneH);
    ctx.fillStyle = "#cfd8dc";
    ctx.fillText(names[c] || `ch${c}`, 4, y0 + Math.min(laneH / 2 + 4, 12));
    if (!(hi >= lo)) continue;
    const mid = (hi + lo) / 2, half = niceScale(Math.max((hi - lo) / 2, 1e-12));
    if (laneH >= 24) { ctx.fillStyle = "#90a4ae"; ctx.fillText(`±${fmt(half)} ${p.spec.units}`, 4, y0 + Math.min(laneH - 3, 24)); }
    const sy = (laneH / 2 - 1) / half, yc = y0 + laneH / 2;
    ctx.strokeStyle = `hsl(${(c * 47) % 360} 70% 65%)`;
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let i = 0; i < N; i++) {
      const a = mins[i], b = maxs[i];
      if (a !== a) continue;
      const x = gutter + (i + 0.5) * plotW / N;
      ctx.moveTo(x, yc - (b - mid) * sy - 0.5);
      ctx.lineTo(x, yc - (a - mid) * sy + 0.5);
    }
    ctx.stroke();
  }
  ctx.fillStyle = "#90a4ae";
  ctx.fillText(`−${fmt(h.window_s, 2)} s`, gutter, H - 2);
  ctx.fillText("now", W - 30, H - 2);
  const more = (p.spec.channels || C) - C;
  p.info.textContent = `seq ${h.seq} · ${fmt(h.rate_hz, 4)} Hz · ${C} ch${more > 0 ? ` (+${more} not drawn)` : ""} · min/max of ${N} columns`;
}

function drawImage(p, h, idx) {
  const w = h.width, hgt = h.height;
  if (!p.off || p.off.width !== w || p.off.height !== hgt) {
    p.off = document.createElement("canvas"); p.off.width = w; p.off.height = hgt;
    p.offCtx = p.off.getContext("2d");
    p.img = p.offCtx.createImageData(w, hgt);
  }
  const px = new Uint32Array(p.img.data.buffer), L = lut(h.colormap);
  for (let i = 0; i < w * hgt; i++) px[i] = L[idx[i]];
  p.offCtx.putImageData(p.img, 0, 0);
  const ctx = p.ctx, W = p.canvas.width, H = p.canvas.height, bar = 56;
  ctx.fillStyle = "#101418"; ctx.fillRect(0, 0, W, H);
  const s = Math.min((W - bar) / w, H / hgt), dw = w * s, dh = hgt * s;
  ctx.imageSmoothingEnabled = s < 1;
  ctx.drawImage(p.off, 0, 0, w, hgt, (W - bar - dw) / 2, (H - dh) / 2, dw, dh);
  // colour scale
  const x0 = W - bar + 6, top = 10, bot = H - 10;
  for (let y = top; y < bot; y++) { ctx.fillStyle = cssColour(h.colormap, 1 - (y - top) / (bot - top)); ctx.fillRect(x0, y, 10, 1); }
  ctx.fillStyle = "#cfd8dc"; ctx.font = "10px system-ui, sans-serif";
  ctx.fillText(fmt(h.hi), x0 + 12, top + 8);
  ctx.fillText(fmt(h.lo), x0 + 12, bot);
  ctx.fillText(p.spec.units || "", x0 + 12, (top + bot) / 2);
  if (p.lo && document.activeElement !== p.lo && document.activeElement !== p.hi) {
    p.lo.value = fmt(h.lo, 4); p.hi.value = fmt(h.hi, 4);
  }
  p.info.textContent = `seq ${h.seq} · ${w}×${hgt} shown (${p.spec.shape.join("×")} sent) · window ${fmt(h.lo)} … ${fmt(h.hi)} ${p.spec.units}${h.manual ? " (manual)" : " (auto)"}`;
}

// A map (e.g. Young's modulus, kPa) over the B-mode of the same probe: the payload is the B-mode's
// 8-bit indices, then the map's on the same pixels (0: transparent), blended with h.alpha.
function drawOverlay(p, h, bytes) {
  const w = h.width, hgt = h.height, n = w * hgt;
  const ib = bytes.subarray(0, n), ie = bytes.subarray(n, 2 * n);
  if (!p.off || p.off.width !== w || p.off.height !== hgt) {
    p.off = document.createElement("canvas"); p.off.width = w; p.off.height = hgt;
    p.offCtx = p.off.getContext("2d");
    p.img = p.offCtx.createImageData(w, hgt);
  }
  const G = new Uint8Array(lut(h.base_colormap).buffer), C = new Uint8Array(lut(h.colormap).buffer);
  const d = p.img.data, a = h.alpha, b = 1 - a;
  let shown = 0;
  for (let i = 0; i < n; i++) {
    const g = 4 * ib[i], o = 4 * i;
    if (ie[i]) {
      const c = 4 * ie[i];
      d[o] = b * G[g] + a * C[c]; d[o + 1] = b * G[g + 1] + a * C[c + 1]; d[o + 2] = b * G[g + 2] + a * C[c + 2];
      shown++;
    } else { d[o] = G[g]; d[o + 1] = G[g + 1]; d[o + 2] = G[g + 2]; }
    d[o + 3] = 255;
  }
  p.offCtx.putImageData(p.img, 0, 0);
  const ctx = p.ctx, W = p.canvas.width, H = p.canvas.height, bar = 56, left = 30, bottom = 14;
  ctx.fillStyle = "#101418"; ctx.fillRect(0, 0, W, H);
  const [x0, x1, z0, z1] = h.extent_mm;
  // mm are square: scale by the physical aspect, not by the pixel counts
  const s = Math.min((W - bar - left) / (x1 - x0), (H - bottom) / (z1 - z0)), dw = (x1 - x0) * s, dh = (z1 - z0) * s;
  const ox = left + (W - bar - left - dw) / 2, oy = (H - bottom - dh) / 2;
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(p.off, 0, 0, w, hgt, ox, oy, dw, dh);
  // axes: depth (left) and width (bottom) in mm
  ctx.fillStyle = "#90a4ae"; ctx.font = "10px system-ui, sans-serif";
  ctx.fillText(`${fmt(z0, 3)}`, 2, oy + 10); ctx.fillText(`${fmt(z1, 3)}`, 2, oy + dh); ctx.fillText("mm", 2, oy + dh / 2);
  ctx.fillText(`${fmt(x0, 3)}`, ox, H - 2); ctx.fillText(`${fmt(x1, 3)} mm`, ox + dw - 40, H - 2);
  // colour scale of the map
  const cx = W - bar + 6, top = 10, bot = H - 10;
  for (let y = top; y < bot; y++) { ctx.fillStyle = cssColour(h.colormap, 1 - (y - top) / (bot - top)); ctx.fillRect(cx, y, 10, 1); }
  ctx.fillStyle = "#cfd8dc";
  ctx.fillText(fmt(h.hi), cx + 12, top + 8);
  ctx.fillText(fmt(h.lo), cx + 12, bot);
  ctx.fillText(p.spec.units || "", cx + 12, (top + bot) / 2);
  if (p.lo && document.activeElement !== p.lo && document.activeElement !== p.hi) {
    p.lo.value = fmt(h.lo, 4); p.hi.value = fmt(h.hi, 4);
  }
  p.el.dataset.shown = shown;
  p.info.textContent = `${p.spec.map} over ${h.base} · ${w}×${hgt} · ${fmt(h.lo)} … ${fmt(h.hi)} ${p.spec.units}` +
    `${h.manual ? " (manual)" : " (auto)"} · transparent below confidence ${fmt(h.min_confidence, 2)} · ` +
    `${(100 * h.shown_fraction).toFixed(0)} % of the map shown`;
}

// history: float32 (history_cols × history_n), oldest first, NaN where there was no number
function drawScalar(p, h, a) {
  const labels = p.spec.labels || [];
  const rows = h.values.map((v, i) => el("div", { class: "value" },
    el("span", { class: "label", text: labels[i] || `[${i}]` }),
    el("span", { class: "num", text: fmt(v, 4) }),
    el("span", { class: "unit", text: p.spec.units || "" })));
  p.values.replaceChildren(...rows);
  const ctx = p.ctx, W = p.canvas.width, H = p.canvas.height;
  ctx.fillStyle = "#101418"; ctx.fillRect(0, 0, W, H);
  const n = h.history_n || 0;
  for (let k = 0; k < (h.history_cols || 0); k++) {
    const series = a.subarray(k * n, (k + 1) * n);
    let lo = Infinity, hi = -Infinity, count = 0;
    for (const v of series) if (!Number.isNaN(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); count++; }
    if (count < 2) continue;
    const r = hi - lo || 1;
    ctx.strokeStyle = `hsl(${(k * 90 + 190) % 360} 70% 65%)`;
    ctx.beginPath();
    let started = false;
    series.forEach((v, i) => {
      if (Number.isNaN(v)) return;
      const x = i * (W - 2) / (n - 1) + 1, y = H - 3 - (v - lo) / r * (H - 6);
      started ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
      started = true;
    });
    ctx.stroke();
  }
  p.info.textContent = `seq ${h.seq} · history ${fmt(h.history_s, 3)} s`;
}

function drawProfile(p, h, a) {
  const ctx = p.ctx, W = p.canvas.width, H = p.canvas.height;
  ctx.fillStyle = "#101418"; ctx.fillRect(0, 0, W, H);
  let lo = Infinity, hi = -Infinity;
  for (const v of a) if (v === v) { if (v < lo) lo = v; if (v > hi) hi = v; }
  if (!(hi >= lo)) return;
  const r = hi - lo || 1;
  ctx.strokeStyle = "#4fc3f7"; ctx.beginPath();
  for (let i = 0; i < a.length; i++) {
    const x = 40 + i * (W - 46) / Math.max(1, a.length - 1), y = H - 12 - (a[i] - lo) / r * (H - 24);
    i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
  }
  ctx.stroke();
  ctx.fillStyle = "#cfd8dc"; ctx.font = "10px system-ui, sans-serif";
  ctx.fillText(fmt(hi), 2, 12); ctx.fillText(fmt(lo), 2, H - 12);
  p.info.textContent = `seq ${h.seq} · ${h.points} points${h.step > 1 ? ` (mean of ${h.step})` : ""} · ${p.spec.units}`;
}

// ---------------------------------------------------------------- status
function onStatus(s) {
  S.status = s;
  const mode = document.getElementById("mode");
  mode.hidden = !!s.operator;
  document.body.dataset.operator = s.operator ? "1" : "0";
  setBadge("daemon", s.daemon_up ? "daemon up" : "daemon not answering", s.daemon_up);
  setBadge("recon", s.recon_up ? "recon up" : "recon not answering", s.recon_up);
  const L = s.latency.acq_to_pixels_ms;
  const lat = document.getElementById("latency");
  lat.textContent = `frame→pixels p50 ${fmtMs(L.p50)} · p99 ${fmtMs(L.p99)} (n=${L.n})`;
  lat.dataset.p50 = L.p50 == null ? "" : L.p50;
  buildPanels(s.panels);
  health(s.health);
  devices(s.devices);
  recorder(s.recorder);
}

function health(rows) {
  const tb = document.querySelector("#health tbody");
  tb.replaceChildren(...rows.map((r) => el("tr", { class: r.role, dataset: { topic: r.topic, state: r.state || "" } },
    el("td", { text: r.topic }),
    el("td", { class: "state " + (r.state || ""), text: r.state || "—" }),
    el("td", { text: r.fps == null ? (r.frames_done != null ? `${r.frames_done} done` : "—") : fmt(r.fps) }),
    el("td", { text: fmt(r.mbps) }),
    el("td", { text: r.drops == null ? "—" : String(r.drops) }),
    el("td", { text: r.gap_frames == null ? "—" : String(r.gap_frames) }),
    el("td", { text: `${fmtUs(r.latency_us_p50)} / ${fmtUs(r.latency_us_p99)}` }),
    el("td", { text: r.subscribed ? `${fmt(r.view_fps)} / ${fmt(r.view_draws_per_s)}` : "not subscribed" }),
    el("td", { text: `${fmtMs(r.pixels_ms_p50)} / ${fmtMs(r.pixels_ms_p99)}` }),
    el("td", { text: r.recording == null ? "—" : String(r.recording) }),
    el("td", { class: "err", text: (r.last_error || "").slice(0, 80) }))));
}

function ctlButton(b) {
  const btn = el("button", {
    text: b.label, dataset: { cmd: b.cmd, target: b.target, device: b.fields.device || b.fields.target || "", action: b.fields.action || "" },
  });
  btn.addEventListener("click", () => {
    const req = S.nextReq++;
    btn.disabled = true;
    S.reqs.set(req, { label: `${b.label}${b.fields.device || b.fields.target ? " " + (b.fields.device || b.fields.target) : ""}`, button: btn });
    send({ op: "ctl", req, target: b.target, cmd: b.cmd, fields: b.fields });
    setTimeout(() => { btn.disabled = false; }, 6000);
  });
  return btn;
}

function devices(list) {
  for (const d of list) {
    const c = card(d.name);
    c.stateB.textContent = d.state;
    c.stateB.className = "badge state " + d.state;
    c.kind.textContent = `${d.kind}${d.modality ? " · " + d.modality : ""}${d.reconstructor ? " → " + d.reconstructor : ""}`;
    const key = JSON.stringify(d.buttons);
    if (key !== c.buttonsKey) { c.buttonsKey = key; c.buttons.replaceChildren(...d.buttons.map(ctlButton)); }
  }
}

function recorder(r) {
  const box = document.getElementById("recorder");
  if (!r) { box.hidden = true; return; }
  box.hidden = false;
  const key = JSON.stringify(r.buttons) + r.active;
  if (box.dataset.key === key) return;
  box.dataset.key = key;
  box.replaceChildren(el("span", { class: "badge " + (r.active ? "rec" : ""), text: r.active ? "● recording" : "not recording" }),
    ...r.buttons.map(ctlButton));
}

connect();
