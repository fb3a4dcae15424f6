// What the dashboard draws: the main figure (heatmap, candles, footprint, alerts, profile, volume, OBI, CVD,
// coverage — one shared time axis) and the cumulative depth chart, built from the state with plotly.js.
/* global Plotly */

import { BAR_MS, toMs } from "./api.js";

export const FOOTPRINT_MAX_BARS = 40; // footprint cells are drawn when at most this many bars are visible
const DOMAINS = { price: [0.43, 1], volume: [0.31, 0.41], obi: [0.185, 0.29], cvd: [0.06, 0.165], coverage: [0, 0.035] };
const PROFILE_DOMAIN = [0.885, 1];
const CONFIG = { displaylogo: false, responsive: true, scrollZoom: true, modeBarButtonsToRemove: ["select2d", "lasso2d"] };

export function colors() {
  const css = getComputedStyle(document.documentElement);
  const get = (name) => css.getPropertyValue(name).trim();
  return {
    bg: get("--bg"), panel: get("--panel"), fg: get("--fg"), muted: get("--muted"), grid: get("--grid"),
    border: get("--border"), accent: get("--accent"), up: get("--up"), down: get("--down"), warn: get("--warn"),
  };
}

function alpha(color, a) {
  // "#rrggbb" -> rgba with alpha a
  const n = parseInt(color.slice(1), 16);
  return `rgba(${(n >> 16) & 255},${(n >> 8) & 255},${n & 255},${a})`;
}

export function formatSize(value) {
  if (value === null || value === undefined) return "";
  const abs = Math.abs(value);
  if (abs >= 1e6) return `${(value / 1e6).toFixed(abs >= 1e7 ? 0 : 1)}M`;
  if (abs >= 1e4) return `${(value / 1e3).toFixed(0)}k`;
  if (abs >= 1e3) return `${(value / 1e3).toFixed(1)}k`;
  return Number.isInteger(value) ? String(value) : value.toFixed(abs >= 10 ? 1 : 3);
}

const ms = (bar) => bar.ms;

// ---- traces --------------------------------------------------------------------------------------

function heatmapTrace(state, c) {
  const map = state.heatmap;
  if (!map || !map.times.length) return [];
  const clock = state.mode === "replay" ? state.replay.clockMs : Infinity;
  const z = map.prices.map((_, row) => map.times.map((t, col) => (t > clock ? null : map.bids[row][col] - map.asks[row][col])));
  const top = Math.max(1e-9, map.scale_size || map.max_size || 1);
  // Bids positive (up colour), asks negative (down colour), zero transparent; the stops stretch small sizes.
  const scale = [
    [0, alpha(c.down, 0.9)], [0.3, alpha(c.down, 0.55)], [0.45, alpha(c.down, 0.25)], [0.5, "rgba(0,0,0,0)"],
    [0.55, alpha(c.up, 0.25)], [0.7, alpha(c.up, 0.55)], [1, alpha(c.up, 0.9)],
  ];
  return [{
    type: "heatmap", name: "liquidity heatmap", uid: "heatmap", x: map.times, y: map.prices, z,
    zmin: -top, zmax: top, zmid: 0, colorscale: scale, showscale: false, zsmooth: false, hoverinfo: "skip",
    opacity: state.footprintVisible ? 0.3 : 0.85, // faint behind footprint cells, so their numbers read
    xaxis: "x", yaxis: "y",
  }];
}

function candleTraces(state, bars, c) {
  const x = bars.map(ms);
  const dim = state.footprintVisible ? 0.35 : 1;
  const traces = [{
    type: "candlestick", name: "price", uid: "candles", x,
    open: bars.map((b) => b.open), high: bars.map((b) => b.high), low: bars.map((b) => b.low), close: bars.map((b) => b.close),
    increasing: { line: { color: c.up, width: 1 }, fillcolor: c.up }, decreasing: { line: { color: c.down, width: 1 }, fillcolor: c.down },
    opacity: dim, xaxis: "x", yaxis: "y", whiskerwidth: 0.3,
  }, {
    type: "scatter", mode: "lines", name: "session VWAP", uid: "vwap", x, y: bars.map((b) => b.session_vwap),
    line: { color: c.accent, width: 1, dash: "dot" }, xaxis: "x", yaxis: "y", hoverinfo: "skip",
  }];
  return traces;
}

function footprintTrace(state, c) {
  const data = state.footprint && state.footprintVisible ? state.footprint.data : [];
  if (!data.length) return [];
  const x = [], y = [], text = [], color = [];
  for (const bar of data) {
    const at = toMs(bar.timestamp); // cells sit on the candle
    for (const level of bar.levels) {
      x.push(at);
      y.push(level.price);
      text.push(`${formatSize(level.sell)} × ${formatSize(level.buy)}`);
      color.push(level.buy_imbalance ? c.up : level.sell_imbalance ? c.down : level.price === bar.poc ? c.warn : c.fg);
    }
  }
  return [{
    type: "scatter", mode: "text", name: "footprint", uid: "footprint", x, y, text,
    textfont: { color, size: 10, family: "ui-monospace, Menlo, Consolas, monospace" },
    hovertemplate: "%{y}: sell × buy %{text}<extra>footprint</extra>", xaxis: "x", yaxis: "y",
  }];
}

function alertTrace(state, bars, c) {
  const list = state.alerts || [];
  if (!list.length || !bars.length) return [];
  const closeAt = (t) => {
    let found = bars[0];
    for (const bar of bars) if (bar.ms <= t) found = bar;
    return found.close ?? found.open;
  };
  const rising = (a) => a.direction === "up" || a.direction === "bid";
  return [{
    type: "scatter", mode: "markers", name: "alerts", uid: "alerts",
    x: list.map((a) => toMs(a.bar_timestamp || a.timestamp)), y: list.map((a) => closeAt(toMs(a.bar_timestamp || a.timestamp))),
    text: list.map((a) => `${a.kind} ${a.direction}: ${a.message}`),
    marker: { symbol: list.map((a) => (rising(a) ? "triangle-up" : "triangle-down")), size: 11, color: c.warn, line: { color: c.bg, width: 1 } },
    hovertemplate: "%{text}<extra>alert</extra>", xaxis: "x", yaxis: "y",
  }];
}

function volumeTraces(bars, c) {
  const x = bars.map(ms);
  const trace = (name, key, color) => ({
    type: "bar", name, uid: key, x, y: bars.map((b) => b[key]), marker: { color, line: { width: 0 } },
    xaxis: "x", yaxis: "y2", hovertemplate: `%{y} ${name}<extra></extra>`,
  });
  return [trace("buy volume", "buy_volume", c.up), trace("sell volume", "sell_volume", c.down), trace("unknown side", "unknown_volume", c.muted)];
}

function indicatorCandles(bars, prefix, name, uid, yaxis, c) {
  return [{
    type: "candlestick", name, uid, x: bars.map(ms), yaxis, xaxis: "x",
    open: bars.map((b) => b[`${prefix}_open`]), high: bars.map((b) => b[`${prefix}_high`]),
    low: bars.map((b) => b[`${prefix}_low`]), close: bars.map((b) => b[`${prefix}_close`]),
    increasing: { line: { color: c.up, width: 1 }, fillcolor: alpha(c.up, 0.6) },
    decreasing: { line: { color: c.down, width: 1 }, fillcolor: alpha(c.down, 0.6) }, whiskerwidth: 0.2,
  }];
}

// Coverage: the stream intervals held (thin) and the gaps (thick; hover says the reason), one band.
function coverageTraces(state, c) {
  const cover = state.coverage;
  if (!cover) return [];
  const held = { x: [], y: [], text: [] };
  const holes = { x: [], y: [], text: [] };
  const recorded = { x: [], y: [], text: [] };
  const now = Date.now();
  const from = state.window ? state.window.startMs : -Infinity;
  const until = state.window ? Math.max(state.window.endMs, now) : Infinity;
  const segment = (into, start, end, label) => {
    const a = Math.max(toMs(start), from);
    const b = Math.min(end ? toMs(end) : now, until);
    if (!(b > a)) return;
    const steps = 24; // points along the segment, so hovering anywhere on it finds one
    for (let i = 0; i <= steps; i += 1) {
      into.x.push(a + ((b - a) * i) / steps);
      into.y.push(0);
      into.text.push(label);
    }
    into.x.push(null);
    into.y.push(null);
    into.text.push("");
  };
  for (const stream of cover.streams) {
    for (const interval of stream.intervals) segment(held, interval.start, interval.end, `${stream.tick_type}: held`);
    for (const gap of stream.gaps) {
      if (!(gap.recorded_gaps || []).length) segment(holes, gap.start, gap.end, `${stream.tick_type}: ${gap.reason} (${Math.round(gap.duration_seconds)} s)`);
    }
    for (const gap of stream.recorded_gaps) {
      const label = `${stream.tick_type}: ${gap.reason}${gap.end ? "" : " (ongoing)"} — ${gap.detail || ""} [backfill ${gap.backfill}]`;
      segment(recorded, gap.start, gap.end, label);
    }
  }
  const line = (name, uid, data, color, width) => ({
    type: "scatter", mode: "lines", name, uid, x: data.x, y: data.y, text: data.text, connectgaps: false,
    line: { color, width }, xaxis: "x", yaxis: "y5", hovertemplate: "%{text}<extra></extra>",
  });
  return [
    line("data held", "coverage-held", held, alpha(c.up, 0.45), 5),
    line("holes", "coverage-holes", holes, c.warn, 9),
    line("recorded gaps", "coverage-gaps", recorded, c.down, 9),
  ];
}

const PROFILE_MAX_ROWS = 240;

// The profile's [price, volume] levels, summed into at most PROFILE_MAX_ROWS rows (a fine tick over a wide range
// would be thousands of bars too thin to see).
export function profileRows(levels) {
  if (levels.length <= PROFILE_MAX_ROWS) return levels;
  const prices = levels.map((l) => l[0]);
  const low = Math.min(...prices);
  const step = (Math.max(...prices) - low) / PROFILE_MAX_ROWS;
  const rows = new Map();
  for (const [price, volume] of levels) {
    const row = Math.min(PROFILE_MAX_ROWS - 1, Math.floor((price - low) / step));
    rows.set(row, (rows.get(row) || 0) + volume);
  }
  return [...rows.entries()].sort((a, b) => a[0] - b[0]).map(([row, volume]) => [low + (row + 0.5) * step, volume]);
}

function profileTrace(state, c) {
  const profile = state.summary && state.summary.profile;
  if (!profile || !profile.levels || !profile.levels.length) return [];
  const rows = profileRows(profile.levels);
  const half = rows !== profile.levels && rows.length > 1 ? Math.abs(rows[1][0] - rows[0][0]) / 2 : 0; // binned
  const inside = (p) => profile.value_area_low !== null && p >= profile.value_area_low - half && p <= profile.value_area_high + half;
  const isPoc = (p) => Math.abs(p - profile.poc) <= half + 1e-12;
  return [{
    type: "bar", orientation: "h", name: "volume profile", uid: "profile",
    y: rows.map((l) => l[0]), x: rows.map((l) => l[1]),
    marker: { color: rows.map((l) => (isPoc(l[0]) ? c.warn : inside(l[0]) ? alpha(c.accent, 0.7) : alpha(c.muted, 0.45))) },
    xaxis: "x2", yaxis: "y", hovertemplate: "%{y}: %{x}<extra>profile</extra>",
  }];
}

// ---- layout --------------------------------------------------------------------------------------

function profileShapes(state, c) {
  const profile = state.summary && state.summary.profile;
  if (!profile || profile.poc === null || profile.poc === undefined) return [];
  const line = (y, color, dash) => ({ type: "line", xref: "paper", x0: 0, x1: 1, yref: "y", y0: y, y1: y, line: { color, width: 1, dash } });
  return [line(profile.poc, c.warn, "solid"), line(profile.value_area_high, c.accent, "dash"), line(profile.value_area_low, c.accent, "dash")];
}

function cursorShapes(state, c) {
  const shapes = [];
  const vertical = (x, color) => ({ type: "line", xref: "x", x0: x, x1: x, yref: "paper", y0: 0, y1: 1, line: { color, width: 1, dash: "dot" } });
  if (state.mode === "replay" && state.replay.clockMs) shapes.push(vertical(state.replay.clockMs, c.warn));
  else if (state.depthCursorMs) shapes.push(vertical(state.depthCursorMs, c.muted));
  return shapes;
}

function axisTitle(text, c) {
  return { text, font: { size: 10, color: c.muted }, standoff: 4 };
}

// Without a zoom in the view: from the first bar with trades to the last bar (to the replay's end in a replay),
// not the empty bars of a window that began before the data.
function dataExtent(state) {
  const width = BAR_MS[state.view.bar] || 60e3;
  const first = state.bars.find((bar) => !bar.empty);
  if (!first) return null;
  const last = state.bars[state.bars.length - 1];
  const end = state.mode === "replay" && state.replay.endMs ? state.replay.endMs : last.ms + width;
  return [first.ms - width, end + width];
}

// Zoomed in: the price axis fits the bars in view (plotly would keep the whole window's prices).
function visiblePrices(state, [a, b]) {
  const shown = state.displayBars.filter((bar) => bar.ms >= a && bar.ms <= b && bar.high !== null && bar.high !== undefined);
  if (!shown.length) return null;
  const high = Math.max(...shown.map((bar) => bar.high));
  const low = Math.min(...shown.map((bar) => bar.low));
  const pad = Math.max((high - low) * 0.08, (state.contract && state.contract.min_tick) || 0.01);
  return [low - pad, high + pad];
}

export function mainLayout(state, c) {
  const view = state.view;
  const axis = { gridcolor: c.grid, zerolinecolor: c.grid, linecolor: c.border, tickfont: { size: 10 } };
  const xaxis = {
    ...axis, type: "date", domain: [0, PROFILE_DOMAIN[0] - 0.015], anchor: "y5", rangeslider: { visible: false },
    showspikes: true, spikemode: "across", spikethickness: 1, spikecolor: c.muted, spikedash: "dot", title: axisTitle("UTC", c),
  };
  const range = view.x0 && view.x1 ? [toMs(view.x0), toMs(view.x1)] : dataExtent(state);
  if (range) Object.assign(xaxis, { range, autorange: false });
  else xaxis.autorange = true;
  const yaxis = { ...axis, domain: DOMAINS.price, anchor: "x", title: axisTitle("price", c) };
  const priceRange = range && view.x0 ? visiblePrices(state, range) : null;
  if (priceRange) Object.assign(yaxis, { range: priceRange, autorange: false });
  const obiLabel = state.obiSource === "depth" ? `OBI depth top-${view.levels}` : state.obiSource === "quotes" ? "OBI top of book" : "OBI";
  return {
    paper_bgcolor: c.bg, plot_bgcolor: c.bg, font: { color: c.fg, size: 11 },
    margin: { l: 62, r: 8, t: 8, b: 34 }, showlegend: false, hovermode: "x", dragmode: "pan",
    hoverlabel: { bgcolor: c.panel, bordercolor: c.border, font: { color: c.fg } },
    barmode: "stack", bargap: 0.15, uirevision: state.viewKey,
    xaxis,
    xaxis2: { ...axis, domain: PROFILE_DOMAIN, anchor: "y", showgrid: false, zeroline: false, side: "top", showticklabels: false, title: axisTitle("profile", c), fixedrange: true },
    yaxis,
    yaxis2: { ...axis, domain: DOMAINS.volume, anchor: "x", title: axisTitle("buy / sell", c) },
    yaxis3: { ...axis, domain: DOMAINS.obi, anchor: "x", title: axisTitle(obiLabel, c), range: [-1.05, 1.05], fixedrange: true },
    yaxis4: { ...axis, domain: DOMAINS.cvd, anchor: "x", title: axisTitle("CVD", c) },
    yaxis5: { ...axis, domain: DOMAINS.coverage, anchor: "x", showticklabels: false, showgrid: false, zeroline: false, range: [-1, 1], fixedrange: true, title: axisTitle("gaps", c) },
    shapes: [...profileShapes(state, c), ...cursorShapes(state, c)],
  };
}

export function mainFigure(state) {
  const c = colors();
  const bars = state.displayBars;
  const data = [
    ...heatmapTrace(state, c),
    ...candleTraces(state, bars, c),
    ...footprintTrace(state, c),
    ...alertTrace(state, bars, c),
    ...profileTrace(state, c),
    ...volumeTraces(bars, c),
    ...indicatorCandles(bars, "obi", "OBI", "obi", "y3", c),
    ...indicatorCandles(bars, "cvd", "CVD", "cvd", "y4", c),
    ...coverageTraces(state, c),
  ];
  return { data, layout: mainLayout(state, c), config: { ...CONFIG, modeBarButtonsToAdd: [] } };
}

export function depthFigure(state) {
  const c = colors();
  const book = state.depth;
  const cumulative = book ? book.cumulative : { bids: [], asks: [] };
  const side = (name, uid, levels, color) => ({
    type: "scatter", mode: "lines", name, uid, x: levels.map((l) => l[0]), y: levels.map((l) => l[1]),
    line: { color, width: 1.5, shape: "hv" }, fill: "tozeroy", fillcolor: alpha(color, 0.25),
    hovertemplate: `%{x}: %{y} cumulative<extra>${name}</extra>`,
  });
  const bids = [...cumulative.bids].reverse(); // lowest price first, so the step line runs left to right
  return {
    data: [side("bids", "depth-bids", bids, c.up), side("asks", "depth-asks", cumulative.asks, c.down)],
    layout: {
      paper_bgcolor: c.panel, plot_bgcolor: c.panel, font: { color: c.fg, size: 10 }, showlegend: false,
      margin: { l: 44, r: 6, t: 4, b: 28 }, hovermode: "closest",
      xaxis: { gridcolor: c.grid, linecolor: c.border, title: axisTitle("price", c) },
      yaxis: { gridcolor: c.grid, linecolor: c.border, rangemode: "tozero", title: axisTitle("cumulative size", c) },
      annotations: book && !book.bids.length && !book.asks.length ? [{ text: "no book at this instant", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5, font: { color: c.muted } }] : [],
    },
    config: { displaylogo: false, responsive: true, displayModeBar: false },
  };
}

export async function draw(element, figure) {
  await Plotly.react(element, figure.data, figure.layout, figure.config);
}

export function visibleBarCount(state, range) {
  const [a, b] = range;
  return state.displayBars.filter((bar) => bar.ms >= a && bar.ms <= b).length;
}
