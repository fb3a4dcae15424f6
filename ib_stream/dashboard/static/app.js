// The dashboard's entry point: the controls, loading a view's data, drawing it, and `window.ibDashboard` — the
// state the charts are drawn from, documented in docs/howto/dashboard.md for tests and for the curious.

import * as api from "./api.js";
import { FOOTPRINT_MAX_BARS, depthFigure, draw, mainFigure, formatSize } from "./charts.js";
import { LiveFeed, Replay, normalizeBar } from "./live.js";

const MIN_RENDER_MS = 200; // live updates are drawn at most five times a second
const HEATMAP_COLUMNS = 600;
const $ = (id) => document.getElementById(id);

const state = {
  view: api.readView(window.location.search),
  features: { footprint: false, heatmap: false },
  contracts: [], contract: null, contractId: null, held: new Set(),
  window: null, viewKey: "", mode: "view", loading: false, ready: false, loads: 0, renders: 0,
  bars: [], displayBars: [], obiSource: null, barsQuery: null, summary: null, coverage: null, alerts: [],
  depth: null, depthCursorMs: null, heatmap: null, footprint: null, footprintVisible: false,
  live: null, replay: { running: false, paused: false, complete: false, clockMs: null, ticks: 0 }, notes: {},
};

let generation = 0; // a newer load makes the answers of an older one stale
let controller = null;
let feed = null;
const replay = new Replay(state, { render: scheduleRender, note, poll: (at) => refreshDepth(at) });

function note(key, text) {
  if (text) state.notes[key] = text;
  else delete state.notes[key];
  renderNotes();
}

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function quiet(error) {
  return error && error.name === "AbortError";
}

// ---- loading a view ---------------------------------------------------------------------------------

async function loadView() {
  generation += 1;
  const mine = generation;
  if (controller) controller.abort();
  controller = new AbortController();
  const signal = controller.signal;
  stopMoving();
  const view = state.view;
  api.writeView(view);
  state.loading = true;
  state.contractId = Number(view.contract);
  state.contract = state.contracts.find((c) => c.con_id === state.contractId) || null;
  state.held = state.contract ? api.heldTypes(state.contract) : new Set();
  state.viewKey = api.viewQuery({ ...view, x0: "", x1: "", theme: "" });
  Object.assign(state, { bars: [], summary: null, coverage: null, alerts: [], depth: null, heatmap: null, footprint: null, footprintVisible: false, depthCursorMs: null });
  for (const key of ["bars", "summary", "coverage", "alerts", "depth", "heatmap", "footprint", "live", "replay"]) delete state.notes[key];
  setStatus("loading…");
  try {
    state.window = await api.resolveWindow(view, state.contractId);
  } catch (error) {
    if (mine !== generation || quiet(error)) return;
    state.loading = false;
    setStatus(error.message, true);
    return;
  }
  const win = state.window;
  const [bars, summary, coverage, alerts] = await Promise.allSettled([
    api.bars(state.contractId, view, win, signal),
    api.summary(state.contractId, view, win, signal),
    api.coverage(state.contractId, signal),
    api.alerts(state.contractId, win.startMs, signal),
  ]);
  if (mine !== generation) return;
  if (bars.status === "fulfilled") {
    state.bars = bars.value.data.map(normalizeBar);
    state.obiSource = bars.value.obi_source;
    state.barsQuery = api.barsParams(view, win);
  } else if (!quiet(bars.reason)) note("bars", `bars: ${bars.reason.message}`);
  if (summary.status === "fulfilled") state.summary = summary.value;
  else if (!quiet(summary.reason)) note("summary", `summary: ${summary.reason.message}`);
  if (coverage.status === "fulfilled") state.coverage = coverage.value;
  if (alerts.status === "fulfilled") state.alerts = alerts.value.alerts.filter((a) => api.toMs(a.timestamp) <= win.endMs);
  if (state.bars.length > 20000) note("bars", `${state.bars.length} bars: a larger bar size draws faster`);
  await Promise.all([refreshDepth(win.live ? null : Math.min(win.endMs, Date.now())), loadHeatmap(signal)]);
  if (mine !== generation) return;
  state.loading = false;
  state.ready = true;
  state.loads += 1;
  setStatus(`${state.bars.length} bars · ${win.label}`);
  await render();
  if (win.live) startLive();
  await refreshZoomed();
}

function stopMoving() {
  if (feed) feed.stop();
  feed = null;
  replay.stop();
}

function startLive() {
  feed = new LiveFeed(state, { render: scheduleRender, note, poll: pollLive });
  feed.start();
  renderMode();
}

async function pollLive() {
  await Promise.all([refreshDepth(null), extendHeatmap(), state.footprintVisible ? loadFootprint() : null]);
  scheduleRender();
}

// The book at `atMs` (null: now) for the depth chart.
async function refreshDepth(atMs) {
  const mine = generation;
  try {
    const book = await api.depth(state.contractId, state.view.levels, atMs);
    if (mine !== generation) return;
    state.depth = book;
    delete state.notes.depth;
  } catch (error) {
    if (!quiet(error) && mine === generation) note("depth", `depth: ${error.message}`);
  }
  scheduleRender();
}

function canHeatmap() {
  if (!state.features.heatmap) {
    note("heatmap", "liquidity heatmap: this service has no /v2/heatmap route");
    return false;
  }
  const depth = state.contract && (state.contract.streams || []).find((s) => s.tick_type === "depth" && s.tick_count > 0);
  if (!depth || !state.window || api.toMs(depth.first_tick) >= state.window.endMs) {
    note("heatmap", "liquidity heatmap: no depth recorded for this contract in this window");
    return false; // the route would answer 404 no_depth
  }
  return true;
}

// Times as epoch ms, and `scale_size`: the colour scale's top, the 97th percentile of the cells that hold size
// (the largest cell alone would leave the usual book too faint to see next to one big resting order).
function normalizeHeatmap(answer) {
  const sizes = [];
  for (const matrix of [answer.bids, answer.asks]) for (const row of matrix) for (const v of row) if (v > 0) sizes.push(v);
  sizes.sort((a, b) => a - b);
  const scale = sizes.length ? sizes[Math.floor(sizes.length * 0.97)] : answer.max_size;
  return { ...answer, times: answer.times.map(api.toMs), column_ms: answer.column_ns / 1e6, scale_size: scale || 1 };
}

function visibleRange() {
  const view = state.view;
  if (view.x0 && view.x1) return [api.toMs(view.x0), api.toMs(view.x1)];
  const win = state.window;
  return win ? [win.startMs, win.live ? Date.now() : win.endMs] : [0, 0];
}

async function loadHeatmap(signal) {
  if (!canHeatmap() || !state.window) return;
  const mine = generation;
  const [start, end] = visibleRange();
  const until = Math.min(end, Date.now());
  if (!(until > start)) return;
  try {
    const answer = await api.heatmap(state.contractId, state.view, start, until, HEATMAP_COLUMNS, null, signal);
    if (mine === generation) state.heatmap = normalizeHeatmap(answer);
  } catch (error) {
    if (!quiet(error) && mine === generation) note("heatmap", `liquidity heatmap: ${error.message}`);
  }
}

// Live: the last columns of the heatmap again (the last one was still filling). The service widens the asked
// price range by half a tick, so the new columns are put on the picture's rows by price.
async function extendHeatmap() {
  const map = state.heatmap;
  if (!map || !map.times.length || (state.view.x0 && state.view.x1)) return;
  const start = map.times[map.times.length - 1];
  const columns = Math.ceil((Date.now() - start) / map.column_ms);
  if (columns < 1) return;
  if (columns > 120) {
    await loadHeatmap();
    return;
  }
  const mine = generation;
  const grid = { price_low: map.prices[0], price_high: map.prices[map.prices.length - 1], rows: map.prices.length };
  try {
    const part = normalizeHeatmap(await api.heatmap(state.contractId, state.view, start, start + columns * map.column_ms, columns, grid));
    if (mine !== generation || state.heatmap !== map) return;
    const rowOf = part.prices.map((price) => Math.round((price - map.prices[0]) / map.price_step));
    part.times.forEach((t, column) => {
      let at = map.times.lastIndexOf(t);
      if (at < 0) {
        map.times.push(t);
        at = map.times.length - 1;
      }
      for (let row = 0; row < map.prices.length; row += 1) {
        map.bids[row][at] = 0;
        map.asks[row][at] = 0;
      }
      rowOf.forEach((row, from) => {
        if (row < 0 || row >= map.prices.length) return; // outside the picture: the next full load shows it
        map.bids[row][at] += part.bids[from][column];
        map.asks[row][at] += part.asks[from][column];
      });
    });
    map.max_size = Math.max(map.max_size, part.max_size);
  } catch (error) {
    if (!quiet(error) && mine === generation) note("heatmap", `liquidity heatmap: ${error.message}`);
  }
}

// A price level per cell that keeps about FOOTPRINT_ROWS cells across the visible bars: a whole number of ticks.
const FOOTPRINT_ROWS = 24;

function footprintStep(start, end) {
  const tick = (state.contract && state.contract.min_tick) || 0.01;
  const shown = state.bars.filter((bar) => bar.ms >= start && bar.ms < end && !bar.empty);
  if (!shown.length) return tick;
  const span = Math.max(...shown.map((b) => b.high)) - Math.min(...shown.map((b) => b.low));
  return Number((Math.max(1, Math.ceil(span / FOOTPRINT_ROWS / tick)) * tick).toFixed(10));
}

async function loadFootprint() {
  const barMs = api.BAR_MS[state.view.bar];
  const [a, b] = visibleRange();
  const start = Math.floor(a / barMs) * barMs;
  const end = Math.min(Math.ceil(b / barMs) * barMs, Date.now() + barMs);
  const mine = generation;
  try {
    const answer = await api.footprint(state.contractId, state.view, start, end, footprintStep(start, end));
    if (mine === generation) state.footprint = answer;
  } catch (error) {
    if (!quiet(error) && mine === generation) note("footprint", `footprint: ${error.message}`);
  }
}

// After a zoom: footprint cells when few enough bars are visible, and the heatmap at the new resolution.
async function refreshZoomed() {
  const [a, b] = visibleRange();
  const visible = state.bars.filter((bar) => bar.ms >= a && bar.ms <= b).length;
  const wanted = visible > 0 && visible <= FOOTPRINT_MAX_BARS;
  if (wanted && !state.features.footprint) {
    note("footprint", "footprint: this service has no /v2/footprint route");
  } else if (wanted) {
    await loadFootprint();
    delete state.notes.footprint;
  }
  state.footprintVisible = wanted && state.footprint !== null;
  if (state.view.x0 && state.view.x1) await loadHeatmap();
  scheduleRender();
}

// ---- drawing ---------------------------------------------------------------------------------------

let renderTimer = null;
let lastRender = 0;

function scheduleRender() {
  if (renderTimer !== null) return;
  const wait = Math.max(0, MIN_RENDER_MS - (performance.now() - lastRender));
  renderTimer = window.setTimeout(() => {
    renderTimer = null;
    render();
  }, wait);
}

async function render() {
  lastRender = performance.now();
  state.displayBars = state.mode === "replay" ? replay.displayBars(state.bars) : state.bars;
  const footprint = state.footprint;
  if (footprint && state.mode === "replay") {
    const barMs = api.BAR_MS[state.view.bar];
    state.footprint = { ...footprint, data: footprint.data.filter((bar) => api.toMs(bar.timestamp) + barMs <= state.replay.clockMs) };
  }
  await draw($("chart"), mainFigure(state));
  state.footprint = footprint;
  await draw($("depth"), depthFigure(state));
  state.renders += 1;
  state.renderMs = Math.round(performance.now() - lastRender);
  renderSummary();
  renderNotes();
  renderMode();
}

function renderSummary() {
  const s = state.summary;
  const rows = [];
  const add = (name, value) => rows.push(`<dt>${name}</dt><dd>${value ?? "—"}</dd>`);
  const price = (v) => (v === null || v === undefined ? "—" : Number(v).toFixed(Math.max(2, decimals(state.contract))));
  if (s) {
    add("volume", formatSize(s.volume));
    add("buy / sell", `${formatSize(s.buy_volume)} / ${formatSize(s.sell_volume)}`);
    add("VWAP", price(s.vwap));
    add("CVD change", formatSize(s.cvd ? s.cvd.change : null));
    add("POC", price(s.profile && s.profile.poc));
    add("value area", s.profile ? `${price(s.profile.value_area_low)} – ${price(s.profile.value_area_high)}` : "—");
    add("OBI source", state.obiSource === "depth" ? `depth top-${state.view.levels}` : state.obiSource === "quotes" ? "top of book" : "—");
  }
  add("bars", state.bars.length);
  $("summary").innerHTML = rows.join("");
  const at = state.depth ? state.depth.at.slice(11, 23) : "";
  $("depth-at").textContent = at ? `at ${at} UTC` : "";
}

function decimals(contract) {
  if (!contract || !contract.min_tick) return 2;
  const text = String(contract.min_tick);
  return text.includes(".") ? text.split(".")[1].length : 0;
}

function renderNotes() {
  $("notes").innerHTML = Object.values(state.notes).map((text) => `<li>${escapeHtml(text)}</li>`).join("") || "<li>none</li>";
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"]/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[ch]);
}

function renderMode() {
  const badge = $("mode");
  const r = state.replay;
  badge.className = "badge";
  if (state.mode === "replay") {
    badge.classList.add("replay");
    badge.textContent = `replay ${r.speed}× ${r.running ? "playing" : r.paused ? "paused" : r.complete ? "done" : "stopped"}`;
  } else if (feed && state.live && state.live.connected) {
    badge.classList.add("live");
    badge.textContent = "live";
  } else {
    badge.textContent = state.window && state.window.live ? "live (connecting)" : "history";
  }
  $("replay-pause").disabled = state.mode !== "replay" || !(r.running || r.paused);
  $("replay-pause").textContent = r.paused ? "▶ Resume" : "❚❚ Pause";
  $("replay-stop").disabled = state.mode !== "replay";
  $("replay-clock").textContent = state.mode === "replay" && r.clockMs ? `${api.iso(r.clockMs).slice(0, 19).replace("T", " ")} UTC` : "—";
  const seek = $("seek");
  if (state.mode === "replay" && state.window && document.activeElement !== seek) {
    const [a, b] = replayRange();
    seek.value = String(Math.round(((r.clockMs - a) / Math.max(1, b - a)) * 1000));
  }
}

// ---- controls --------------------------------------------------------------------------------------

function replayRange() {
  const win = state.window;
  return [win.startMs, Math.min(win.endMs, Date.now())];
}

function startReplay(fromMs) {
  if (!state.window) return;
  if (feed) feed.stop();
  feed = null;
  const [a, b] = replayRange();
  const types = ["last", "bid_ask"].filter((t) => state.held.has(t));
  replay.start(Math.max(a, Math.min(fromMs, b - 1)), b, Number($("speed").value), types.length ? types : ["last"]);
  renderMode();
}

function stopReplay() {
  replay.stop();
  scheduleRender();
  if (state.window && state.window.live) startLive();
  else refreshDepth(state.depthCursorMs ?? Math.min(state.window.endMs, Date.now()));
}

function fillControls() {
  const view = state.view;
  $("contract").innerHTML = state.contracts
    .map((c) => `<option value="${c.con_id}">${escapeHtml(c.symbol)} ${c.local_symbol ? escapeHtml(c.local_symbol) : ""} (${c.con_id})</option>`)
    .join("");
  $("contract").value = view.contract;
  $("day").value = view.day;
  $("day").querySelector('option[value="range"]').hidden = view.day !== "range";
  $("date").hidden = view.day !== "date";
  $("date").value = view.date;
  $("session").value = view.session;
  $("bar").value = view.bar;
  $("levels").value = String(view.levels);
  $("obi").value = view.obi;
  document.documentElement.dataset.theme = view.theme;
}

function change(update) {
  Object.assign(state.view, update);
  fillControls();
  loadView();
}

function parsePlotlyTime(value) {
  // Plotly gives date-axis positions as "YYYY-MM-DD HH:MM:SS.sss" (UTC here) or as epoch ms.
  return typeof value === "number" ? value : api.toMs(`${String(value).replace(" ", "T")}${String(value).length > 10 ? "Z" : "T00:00:00Z"}`);
}

let zoomTimer = null;
let hoverTimer = null;

function bindChart() {
  const chart = $("chart");
  chart.on("plotly_relayout", (event) => {
    const range = event["xaxis.range"] || (event["xaxis.range[0]"] !== undefined ? [event["xaxis.range[0]"], event["xaxis.range[1]"]] : null);
    if (range) Object.assign(state.view, { x0: api.iso(parsePlotlyTime(range[0])), x1: api.iso(parsePlotlyTime(range[1])) });
    else if (event["xaxis.autorange"]) Object.assign(state.view, { x0: "", x1: "" });
    else return;
    api.writeView(state.view);
    window.clearTimeout(zoomTimer);
    zoomTimer = window.setTimeout(refreshZoomed, 300);
  });
  chart.on("plotly_hover", (event) => {
    if (state.mode === "replay" || (state.window && state.window.live) || !event.points.length) return;
    const at = parsePlotlyTime(event.points[0].x);
    window.clearTimeout(hoverTimer);
    hoverTimer = window.setTimeout(() => {
      state.depthCursorMs = at;
      refreshDepth(at);
    }, 250);
  });
}

function bindControls() {
  $("contract").addEventListener("change", (e) => change({ contract: e.target.value, x0: "", x1: "" }));
  $("day").addEventListener("change", (e) => {
    const day = e.target.value;
    const date = day === "date" ? state.view.date || new Date().toISOString().slice(0, 10) : state.view.date;
    change({ day, date, x0: "", x1: "" });
  });
  $("date").addEventListener("change", (e) => e.target.value && change({ day: "date", date: e.target.value, x0: "", x1: "" }));
  $("session").addEventListener("change", (e) => change({ session: e.target.value }));
  $("bar").addEventListener("change", (e) => change({ bar: e.target.value }));
  $("levels").addEventListener("change", (e) => {
    const levels = Math.min(1000, Math.max(1, Math.round(Number(e.target.value)) || 10));
    change({ levels });
  });
  $("obi").addEventListener("change", (e) => change({ obi: e.target.value }));
  $("theme").addEventListener("click", () => {
    state.view.theme = state.view.theme === "dark" ? "light" : "dark";
    document.documentElement.dataset.theme = state.view.theme;
    api.writeView(state.view);
    render();
  });
  $("replay-start").addEventListener("click", () => startReplay(replayRange()[0]));
  $("replay-pause").addEventListener("click", () => (state.replay.paused ? replay.resume() : replay.pause()));
  $("replay-stop").addEventListener("click", stopReplay);
  $("speed").addEventListener("change", (e) => {
    if (state.mode !== "replay" || !state.replay.running) return;
    replay.pause();
    state.replay.speed = Number(e.target.value);
    replay.resume();
  });
  $("seek").addEventListener("change", (e) => {
    if (!state.window) return;
    const [a, b] = replayRange();
    startReplay(a + ((b - a) * Number(e.target.value)) / 1000);
  });
}

async function start() {
  document.documentElement.dataset.theme = state.view.theme;
  try {
    const [features, contracts] = await Promise.all([api.features(), api.contracts()]);
    state.features = features;
    state.contracts = contracts;
  } catch (error) {
    setStatus(`the service did not answer: ${error.message}`, true);
    return;
  }
  if (!state.contracts.length) {
    setStatus("no contracts are configured", true);
    return;
  }
  if (!state.contracts.some((c) => String(c.con_id) === state.view.contract)) state.view.contract = String(state.contracts[0].con_id);
  state.view.day = await api.openingDay(state.view, window.location.search, state.view.contract);
  fillControls();
  bindControls();
  await draw($("chart"), mainFigure(state));
  bindChart();
  await loadView();
}

window.ibDashboard = { state, reload: loadView, render, requests: api.requestLog, replay, startReplay, stopReplay };
start();
