// Data that moves: the live bar stream (WebSocket /v2/ws/bars/{id}) with the book polled once a second, and the
// replay of a past range (SSE /v2/replay/{id}) played through the same charts, with pause and seek.

import { BAR_MS, iso, isoFromNs, query, toMs } from "./api.js";

const LIVE_HISTORY_BARS = 10; // closed bars re-sent on connect: covers the seam with the /v2/bars answer
const RECONNECT_MS = 2000;
const POLL_MS = 1000;

// A bar row (from /v2/bars or a live `bar` message) with its start as epoch milliseconds.
export function normalizeBar(row) {
  return { ...row, ms: toMs(row.timestamp) };
}

// Apply a bar by its start: the same start replaces, a later one is appended (streaming-protocol upserts).
export function upsertBar(bars, bar) {
  const last = bars.length ? bars[bars.length - 1] : null;
  if (!last || bar.ms > last.ms) {
    bars.push(bar);
    return;
  }
  let low = 0;
  let high = bars.length - 1;
  while (low <= high) {
    const middle = (low + high) >> 1;
    if (bars[middle].ms === bar.ms) {
      bars[middle] = bar;
      return;
    }
    if (bars[middle].ms < bar.ms) low = middle + 1;
    else high = middle - 1;
  }
  bars.splice(low, 0, bar); // a bar older than the last one, not held yet (a late amendment)
}

// ---- live -------------------------------------------------------------------------------------------

export class LiveFeed {
  // hooks: render(), note(key, text), poll() -> Promise (refreshes the book and the heatmap's last columns)
  constructor(state, hooks) {
    this.state = state;
    this.hooks = hooks;
    this.socket = null;
    this.timer = null;
    this.retry = null;
    this.stopped = false;
    this.polling = false;
  }

  start() {
    const { view } = this.state;
    const params = {
      kinds: "ohlc,cvd,obi", resolution: view.bar, session: view.session, obi_source: view.obi,
      levels: view.levels, history: LIVE_HISTORY_BARS,
    };
    const scheme = window.location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${window.location.host}/v2/ws/bars/${this.state.contractId}${query(params)}`;
    this.state.live = { connected: false, messages: 0, bars: 0, lastBarAt: null, obiSource: null, url };
    this.open(url);
    this.timer = window.setInterval(() => this.poll(), POLL_MS);
  }

  open(url) {
    const socket = new WebSocket(url);
    this.socket = socket;
    socket.onopen = () => {
      this.state.live.connected = true;
      this.hooks.note("live", null);
    };
    socket.onmessage = (event) => this.receive(JSON.parse(event.data));
    socket.onclose = () => {
      this.state.live.connected = false;
      if (this.stopped || this.socket !== socket) return;
      this.hooks.note("live", "live bar stream closed: reconnecting");
      this.retry = window.setTimeout(() => this.open(url), RECONNECT_MS);
    };
  }

  receive(message) {
    const live = this.state.live;
    live.messages += 1;
    if (message.type === "bar") {
      upsertBar(this.state.bars, normalizeBar(message.data));
      live.bars += 1;
      live.lastBarAt = Date.now();
      this.hooks.render();
    } else if (message.type === "alert") {
      this.state.alerts.unshift(message.data);
      this.hooks.render();
    } else if (message.type === "info" && message.data.status === "subscribed") {
      live.obiSource = message.data.obi_source;
    } else if (message.type === "error") {
      this.hooks.note("live", `live bars: ${message.data.code} ${message.data.message}`);
    }
  }

  async poll() {
    if (this.polling || this.stopped) return; // a slow answer is not asked for twice
    this.polling = true;
    try {
      await this.hooks.poll();
    } finally {
      this.polling = false;
    }
  }

  stop() {
    this.stopped = true;
    window.clearInterval(this.timer);
    window.clearTimeout(this.retry);
    if (this.socket) this.socket.close();
    this.socket = null;
  }
}

// ---- replay -----------------------------------------------------------------------------------------

// Closed bars are the /v2/bars rows (exact); the bar in progress is built here from the re-played trades: OHLC,
// volume, buy / sell by the trade's recorded side or else the quote rule (tick rule inside the spread), CVD from
// the bar's cvd_open, OBI from the last quote's sizes (top of book) or, for depth OBI, the bar's opening value.
export class Replay {
  // hooks: render(), note(key, text), poll(atMs) -> Promise (the book at the replay clock)
  constructor(state, hooks) {
    this.state = state;
    this.hooks = hooks;
    this.source = null;
    this.timer = null;
    this.lastNs = null;
    this.forming = null;
    this.quote = null;
    this.lastPrice = null;
    this.direction = 0;
  }

  barMs() {
    return BAR_MS[this.state.view.bar];
  }

  // Start at `fromMs` (snapped to its bar's start, so the bar in progress is built whole) up to `endMs`.
  start(fromMs, endMs, speed, tickTypes) {
    this.close();
    const from = Math.floor(fromMs / this.barMs()) * this.barMs();
    this.forming = null;
    this.quote = null;
    this.lastPrice = null;
    this.direction = 0;
    this.tickTypes = tickTypes;
    this.lastNs = null;
    this.state.mode = "replay";
    this.state.replay = { running: true, paused: false, complete: false, speed, startMs: from, endMs, clockMs: from, ticks: 0 };
    this.open(iso(from));
    this.timer = window.setInterval(() => this.hooks.poll(this.state.replay.clockMs), 1000);
    this.hooks.render();
  }

  open(startIso) {
    const replay = this.state.replay;
    const params = { start_time: startIso, end_time: iso(replay.endMs), speed: replay.speed, tick_types: this.tickTypes.join(","), heartbeat: 1 };
    const source = new EventSource(`/v2/replay/${this.state.contractId}${query(params)}`);
    this.source = source;
    source.addEventListener("tick", (event) => this.tick(event.data));
    source.addEventListener("complete", () => this.finish(null));
    source.addEventListener("error", (event) => {
      // A server `error` message carries data; without data the connection failed. Either way the replay
      // ends here: EventSource would otherwise reconnect and play the range again from its start.
      const text = event.data ? JSON.parse(event.data).data.message : "the replay stream was interrupted";
      this.finish(text);
    });
  }

  tick(text) {
    const found = /"ts":(\d+)/.exec(text); // the exact nanoseconds (JSON numbers lose the last digits)
    const data = JSON.parse(text).data;
    const ns = found ? BigInt(found[1]) : BigInt(Math.round(data.ts));
    this.lastNs = ns;
    const replay = this.state.replay;
    replay.clockMs = Number(ns / 1000000n);
    replay.ticks += 1;
    if (data.tick_type === "bid_ask") this.quote = data;
    else if (data.tick_type === "last" || data.tick_type === "all_last") this.trade(data, replay.clockMs);
    this.hooks.render();
  }

  side(trade) {
    if (trade.side === 1 || trade.side === -1) return trade.side;
    const q = this.quote;
    let side = 0;
    if (q && q.ask_price !== null && trade.price >= q.ask_price) side = 1;
    else if (q && q.bid_price !== null && trade.price <= q.bid_price) side = -1;
    else if (this.lastPrice !== null && trade.price !== this.lastPrice) side = trade.price > this.lastPrice ? 1 : -1;
    else side = this.direction;
    return side;
  }

  trade(trade, atMs) {
    const start = Math.floor(atMs / this.barMs()) * this.barMs();
    if (!this.forming || this.forming.ms !== start) {
      this.forming = { ms: start, timestamp: iso(start), open: trade.price, high: trade.price, low: trade.price, close: trade.price, volume: 0, buy_volume: 0, sell_volume: 0, unknown_volume: 0, delta: 0, trade_count: 0, forming: true, empty: false };
    }
    const bar = this.forming;
    const side = this.side(trade);
    if (side !== 0) this.direction = side;
    this.lastPrice = trade.price;
    bar.high = Math.max(bar.high, trade.price);
    bar.low = Math.min(bar.low, trade.price);
    bar.close = trade.price;
    bar.volume += trade.size;
    bar.trade_count += 1;
    if (side > 0) bar.buy_volume += trade.size;
    else if (side < 0) bar.sell_volume += trade.size;
    else bar.unknown_volume += trade.size;
    bar.delta = bar.buy_volume - bar.sell_volume;
  }

  // The bars to draw at the replay clock: every bar closed by then, and the one in progress.
  displayBars(bars) {
    const replay = this.state.replay;
    const width = this.barMs();
    const shown = bars.filter((bar) => bar.ms + width <= replay.clockMs);
    const bar = this.forming;
    if (bar && bar.ms + width > replay.clockMs) {
      const row = bars.find((b) => b.ms === bar.ms);
      const before = shown.length ? shown[shown.length - 1] : null;
      const cvdOpen = row ? row.cvd_open : before ? before.cvd_close : 0;
      const cvdClose = cvdOpen + bar.delta;
      const obi = this.obiNow(row);
      shown.push({
        ...bar, session_vwap: before ? before.session_vwap : null,
        cvd_open: cvdOpen, cvd_close: cvdClose, cvd_high: Math.max(cvdOpen, cvdClose), cvd_low: Math.min(cvdOpen, cvdClose),
        obi_open: row ? row.obi_open : obi, obi_close: obi, obi_high: Math.max(obi, row ? row.obi_open : obi), obi_low: Math.min(obi, row ? row.obi_open : obi),
      });
    }
    return shown;
  }

  obiNow(row) {
    const q = this.quote;
    if (this.state.obiSource === "quotes" && q && q.bid_size + q.ask_size > 0) return (q.bid_size - q.ask_size) / (q.bid_size + q.ask_size);
    return row && row.obi_open !== null ? row.obi_open : 0;
  }

  pause() {
    if (!this.state.replay.running) return;
    this.close();
    Object.assign(this.state.replay, { running: false, paused: true });
    this.hooks.render();
  }

  resume() {
    const replay = this.state.replay;
    if (!replay.paused) return;
    Object.assign(replay, { running: true, paused: false });
    // From just after the last tick played: nothing twice, nothing skipped.
    this.open(this.lastNs === null ? iso(replay.clockMs) : isoFromNs(this.lastNs + 1n));
    this.timer = window.setInterval(() => this.hooks.poll(this.state.replay.clockMs), 1000);
    this.hooks.render();
  }

  finish(problem) {
    this.close();
    Object.assign(this.state.replay, { running: false, paused: false, complete: problem === null });
    this.hooks.note("replay", problem ? `replay stopped: ${problem}` : null);
    this.hooks.poll(this.state.replay.clockMs);
    this.hooks.render();
  }

  close() {
    if (this.source) this.source.close();
    this.source = null;
    window.clearInterval(this.timer);
    this.timer = null;
  }

  stop() {
    this.close();
    this.state.mode = "view";
    this.state.replay = { running: false, paused: false, complete: false, clockMs: null, ticks: 0 };
  }
}
