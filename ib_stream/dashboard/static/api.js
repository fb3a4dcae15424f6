// The dashboard's view of the service: the view state in the URL, JSON requests, and what each panel loads.
// Only the public HTTP API is used (docs/reference/api.md); nothing here draws.

export const BAR_SIZES = ["1s", "5s", "15s", "30s", "1m", "5m", "15m", "30m", "1h"];
export const BAR_MS = { "1s": 1e3, "5s": 5e3, "15s": 15e3, "30s": 30e3, "1m": 60e3, "5m": 300e3, "15m": 900e3, "30m": 1800e3, "1h": 3600e3 };
const SESSION_TYPES = ["regular", "extended", "overnight"];
const OBI_SOURCES = ["auto", "depth", "quotes"];
const DAYS = ["current", "previous", "recent", "date", "range"];
const RECENT_MS = 3600e3; // "last hour" — at most RECENT_BARS bars of the bar size, so small bars stay quick
const RECENT_BARS = 600;

// The view: everything a shared link restores. Empty strings are left out of the URL.
export const DEFAULT_VIEW = Object.freeze({
  contract: "", day: "current", date: "", start: "", end: "", session: "regular",
  bar: "1m", levels: 10, obi: "auto", theme: "dark", x0: "", x1: "",
});
const DATE = /^\d{4}-\d{2}-\d{2}$/;

export function readView(search) {
  const params = new URLSearchParams(search);
  const view = { ...DEFAULT_VIEW };
  const text = (key) => (params.get(key) || "").trim();
  if (/^\d+$/.test(text("contract"))) view.contract = text("contract");
  if (DAYS.includes(text("day"))) view.day = text("day");
  if (DATE.test(text("date"))) view.date = text("date");
  for (const key of ["start", "end", "x0", "x1"]) if (text(key) && !Number.isNaN(toMs(text(key)))) view[key] = text(key);
  if (view.start && view.end && !params.get("day")) view.day = "range";
  if (view.date && !params.get("day")) view.day = "date";
  if (view.day === "range" && !(view.start && view.end)) view.day = "current";
  if (view.day === "date" && !view.date) view.day = "current";
  if (SESSION_TYPES.includes(text("session"))) view.session = text("session");
  if (BAR_SIZES.includes(text("bar"))) view.bar = text("bar");
  const levels = Number(text("levels"));
  if (Number.isInteger(levels) && levels >= 1 && levels <= 1000) view.levels = levels;
  if (OBI_SOURCES.includes(text("obi"))) view.obi = text("obi");
  if (["dark", "light"].includes(text("theme"))) view.theme = text("theme");
  return view;
}

export function viewQuery(view) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(view)) {
    if (value === "" || value === null || value === undefined) continue;
    if (key === "date" && view.day !== "date") continue;
    if ((key === "start" || key === "end") && view.day !== "range") continue;
    params.set(key, String(value));
  }
  return params.toString();
}

export function writeView(view) {
  const query = viewQuery(view);
  if (query !== window.location.search.replace(/^\?/, "")) window.history.replaceState(null, "", `?${query}`);
}

// ---- requests --------------------------------------------------------------------------------------

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const requestLog = []; // the last requests, for whoever debugs the page (window.ibDashboard.requests)

export function query(params) {
  const clean = Object.entries(params || {}).filter(([, v]) => v !== undefined && v !== null && v !== "");
  return clean.length ? `?${new URLSearchParams(clean.map(([k, v]) => [k, String(v)]))}` : "";
}

export async function getJson(path, params, signal) {
  const url = path + query(params);
  requestLog.push(url);
  if (requestLog.length > 200) requestLog.shift();
  const response = await fetch(url, { signal, headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = body && body.error ? body.error : { code: "HTTP", message: `${response.status} ${url}` };
    throw new ApiError(response.status, error.code, error.message);
  }
  return body;
}

// The optional routes (footprint, heatmap) are looked up in the schema, so a service without them is never
// asked (no failed request, no console error): their panels say so instead.
export async function features() {
  const schema = await getJson("/openapi.json");
  const paths = Object.keys(schema.paths || {});
  return {
    footprint: paths.includes("/v2/footprint/{contract_id}"),
    heatmap: paths.includes("/v2/heatmap/{contract_id}"),
  };
}

export async function contracts() {
  return (await getJson("/v2/contracts")).contracts;
}

export function heldTypes(contract) {
  return new Set((contract.streams || []).filter((s) => s.tick_count > 0).map((s) => s.tick_type));
}

// ---- the time window of a view ---------------------------------------------------------------------

export function iso(ms) {
  return new Date(ms).toISOString(); // milliseconds and Z: the API reads it
}

// Epoch milliseconds of an API time ("…T14:30:00.123456789Z": digits beyond milliseconds are dropped first).
export function toMs(text) {
  return Date.parse(String(text).replace(/(\.\d{3})\d+/, "$1"));
}

export function isoFromNs(ns) {
  // `ns` a BigInt: an ISO time with all nine digits (the API reads nanoseconds).
  const seconds = ns / 1000000000n;
  const fraction = (ns % 1000000000n).toString().padStart(9, "0");
  return new Date(Number(seconds) * 1000).toISOString().replace(/\.\d{3}Z$/, `.${fraction}Z`);
}

// The day a page opened without one shows: the current session while it is in progress, else the last hour
// (a closed market's current session would be an empty chart). A link that names a day, date or range keeps it.
export async function openingDay(view, search, contractId) {
  const params = new URLSearchParams(search);
  if (["day", "date", "start", "end"].some((key) => params.get(key))) return view.day;
  try {
    const found = await getJson(`/v2/sessions/${contractId}/current`, { session: view.session });
    return found.in_progress ? "current" : "recent";
  } catch {
    return view.day;
  }
}

// Where the view's bars come from: a session (current, previous, a date), the last hour, or an explicit range.
// `live` is true when the window reaches now, so the live streams apply.
export async function resolveWindow(view, contractId, now = Date.now()) {
  const session = view.session;
  if (view.day === "recent") {
    const span = Math.min(RECENT_MS, RECENT_BARS * BAR_MS[view.bar]);
    const start = now - span;
    const label = span === RECENT_MS ? "last hour" : `last ${Math.round(span / 60e3)} min`;
    return { startMs: start, endMs: now, live: true, label, bars: { start_time: iso(start), session } };
  }
  if (view.day === "range") {
    const startMs = toMs(view.start);
    const endMs = toMs(view.end);
    return { startMs, endMs, live: false, label: `${view.start} → ${view.end}`, bars: { start_time: view.start, end_time: view.end, session } };
  }
  const which = view.day === "date" ? view.date : view.day;
  const found = await getJson(`/v2/sessions/${contractId}/${which}`, { session });
  const live = view.day === "current" && found.in_progress;
  const bars = view.day === "current" ? { session } : { session, date: found.date };
  const endMs = live ? now : toMs(found.end);
  return { startMs: toMs(found.start), endMs, sessionEndMs: toMs(found.end), live, label: `${found.session_type} ${found.date}`, session: found, bars };
}

// ---- panel data ------------------------------------------------------------------------------------

export function barsParams(view, window) {
  return { kinds: "ohlc,cvd,obi", resolution: view.bar, levels: view.levels, obi_source: view.obi, ...window.bars };
}

export async function bars(contractId, view, window, signal) {
  return getJson(`/v2/bars/${contractId}`, barsParams(view, window), signal);
}

export async function summary(contractId, view, window, signal) {
  const params = barsParams(view, window);
  delete params.kinds; // the summary has no kinds nor resolution
  delete params.resolution;
  return getJson(`/v2/bars/${contractId}/summary`, { ...params, profile: true }, signal);
}

export async function depth(contractId, levels, atMs, signal) {
  return getJson(`/v2/depth/${contractId}`, { levels, at: atMs === null ? undefined : iso(atMs) }, signal);
}

export async function coverage(contractId, signal) {
  return getJson(`/v2/contracts/${contractId}/coverage`, { min_gap: "30s" }, signal);
}

export async function alerts(contractId, sinceMs, signal) {
  return getJson("/v2/alerts", { contract_id: contractId, since: iso(sinceMs), limit: 1000 }, signal);
}

export async function footprint(contractId, view, startMs, endMs, priceStep, signal) {
  const params = { start_time: iso(startMs), end_time: iso(endMs), resolution: view.bar, price_step: priceStep };
  return getJson(`/v2/footprint/${contractId}`, params, signal);
}

// `grid` (price_low, price_high, rows) asks a refresh for the rows of the picture it extends.
export async function heatmap(contractId, view, startMs, endMs, columns, grid, signal) {
  const params = { start_time: iso(startMs), end_time: iso(endMs), columns, ...(grid || {}) };
  return getJson(`/v2/heatmap/${contractId}`, params, signal);
}
