"""Analytics: the bar engine — the one implementation of every order-flow bar field, from per-second rows.

Every path that produces bars — `/v2/historical?resolution=`, `/v2/bars`, session bars, the stored
rollups, the live bars, the JSON sink, the alerts, `StorageQuery` — builds rows (`rows.py`) and calls
`bars_from_rows`; docs/concepts/order-flow.md defines each column:

OHLC (trades). open / high / low / close of the trade prices in the bar; volume = Σ size; vwap =
Σ price·size / volume; trade_count; buy / sell / unknown volume by the trade's side; session_vwap =
Σ price·size / Σ size from the last reset (session start) to the bar's end. Gap-fill policy: every bar of
the grid is returned; a bar without trades has `empty=True`, zero volume / count / buy / sell volume,
`vwap` NaN, and open = high = low = close = the last close before it (the last trade before the range
when the input holds one, else NaN).

CVD. delta = Σ side·size of the bar's trades (buy − sell volume); the cumulative value runs over trades in
time order and restarts at 0 at every reset instant (session starts, or the range start when anchored
there). cvd_open is the cumulative value at the bar's start, cvd_close at its end, cvd_high / cvd_low the
extremes of the path in between (the open, the value after each trade and 0 at a reset inside the bar).

OBI. An event is a top-of-book quote or a whole book update of the depth book (the depth ticks that
share one timestamp: one imported book row, one IB message); OBI = (bid − ask) / (bid + ask) of its
volumes, events with no volume skipped. OBI is a state: obi_open is the value in force at the bar's start
(carried from the last event before it; the bar's first event when nothing came before), obi_high /
obi_low the extremes over that value and the bar's events, obi_close the value in force at the bar's
end, obi_count the number of events in the bar. A bar without events is flat at the carried value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import pyarrow as pa

from ib_stream.analytics.grid import BarGrid, Segments, carry_forward, segment_reduce
from ib_stream.analytics.rows import METHOD_COLUMNS, Rows, obi_rows, second_rows
from ib_stream.analytics.side import floats_at

OHLC_COLUMNS: Final = (
    "open",
    "high",
    "low",
    "close",
    "volume",
    "vwap",
    "trade_count",
    "buy_volume",
    "sell_volume",
    "unknown_volume",
    "session_vwap",
    "empty",
)
CVD_COLUMNS: Final = ("delta", "cvd_open", "cvd_high", "cvd_low", "cvd_close")
OBI_COLUMNS: Final = ("obi_open", "obi_high", "obi_low", "obi_close", "obi_count")
BAR_COLUMNS: Final = (*OHLC_COLUMNS, *CVD_COLUMNS, *OBI_COLUMNS)


def bars_from_rows(
    grid: BarGrid,
    rows: Rows,
    kinds: Sequence[str],
    resets: np.ndarray | Sequence[int] = (),
    obi_from_ns: int | None = None,
    trades_from_ns: int | None = None,
    range_ns: tuple[int, int] | None = None,
    obi_source_rows: Rows | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Bars of `grid` (the OHLC, CVD and OBI columns asked in `kinds`) from the rows of [context, end), and the
    side-method counts of the trades in `range_ns` (default: in the grid's windows).

    Every grid boundary and reset must be a row boundary (rows built with them as `edges`). Trades count
    from `trades_from_ns` on (the context start), OBI events from `obi_from_ns` on; OBI comes from
    `obi_source_rows` when given (depth), else from the OBI columns of `rows` (top of book).
    """
    out: dict[str, np.ndarray] = {}
    methods: dict[str, int] = {}
    if "ohlc" in kinds or "cvd" in kinds:
        traded = rows["trade_count"] > 0
        if trades_from_ns is not None:
            traded &= rows["second"] >= trades_from_ns
        sec = rows["second"][traded]
        lo, hi = grid.locate(sec)
        if range_ns is not None:
            mask = (sec >= range_ns[0]) & (sec < range_ns[1])
        else:
            inside = np.zeros(len(sec) + 1, dtype=np.int64)
            if len(grid):
                np.add.at(inside, lo, 1)
                np.add.at(inside, hi, -1)
            mask = np.cumsum(inside)[:-1] > 0
        for method, name in METHOD_COLUMNS.items():
            methods[method] = int(rows[name][traded][mask].sum())
    if "ohlc" in kinds:
        # Rows of trades alone (no OBI event among them) are all kept: no copy of every column.
        kept = rows if traded.all() else {name: rows[name][traded] for name in rows}
        out.update(_ohlc(grid, sec, kept, lo, hi, resets))
    if "cvd" in kinds:
        if "ohlc" not in kinds:
            out["empty"] = hi == lo
        out.update(_cvd(grid, sec, rows["delta"][traded], rows, traded, lo, hi, resets))
    if "obi" in kinds:
        out.update(_obi(grid, rows if obi_source_rows is None else obi_source_rows, obi_from_ns))
    return out, methods


def _ohlc(
    grid: BarGrid,
    sec: np.ndarray,
    t: Rows,
    lo: np.ndarray,
    hi: np.ndarray,
    resets: np.ndarray | Sequence[int],
) -> dict[str, np.ndarray]:
    add = np.add
    filled = hi > lo
    opens = np.full(len(grid), np.nan)
    closes = np.full(len(grid), np.nan)
    opens[filled] = t["open"][lo[filled]]
    closes[filled] = t["close"][hi[filled] - 1]
    highs = segment_reduce(np.maximum, t["high"], lo, hi, np.nan)
    lows = segment_reduce(np.minimum, t["low"], lo, hi, np.nan)
    seed = t["close"][lo[0] - 1] if len(grid) and lo[0] > 0 else np.nan
    carried = carry_forward(np.concatenate(([seed], closes)))[1:]
    for column in (opens, highs, lows):
        column[~filled] = carried[~filled]
    volume = segment_reduce(add, t["volume"], lo, hi, 0.0)
    notional = segment_reduce(add, t["notional"], lo, hi, 0.0)
    segments = Segments.of(sec, resets)
    session_notional = segments.value_at(segments.cumsum(t["notional"]), hi, grid.ends - 1)
    session_volume = segments.value_at(segments.cumsum(t["volume"]), hi, grid.ends - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        vwap = np.where(volume > 0, notional / volume, np.nan)
        session_vwap = np.where(session_volume > 0, session_notional / session_volume, np.nan)
    return {
        "open": opens,
        "high": highs,
        "low": lows,
        "close": carried,
        "volume": volume,
        "vwap": vwap,
        "trade_count": segment_reduce(add, t["trade_count"], lo, hi, 0.0).astype(np.int64),
        "buy_volume": segment_reduce(add, t["buy_volume"], lo, hi, 0.0),
        "sell_volume": segment_reduce(add, t["sell_volume"], lo, hi, 0.0),
        "unknown_volume": segment_reduce(add, t["unknown_volume"], lo, hi, 0.0),
        "session_vwap": session_vwap,
        "empty": ~filled,
    }


def _cvd(
    grid: BarGrid,
    sec: np.ndarray,
    delta: np.ndarray,
    rows: Rows,
    traded: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    resets: np.ndarray | Sequence[int],
) -> dict[str, np.ndarray]:
    segments = Segments.of(sec, resets)
    cumulative = segments.cumsum(delta)  # the value at each row's end
    before = segments.value_at(cumulative, np.arange(len(sec)), sec)  # … and at its start
    row_high = before + rows["cvd_high_offset"][traded]
    row_low = before + rows["cvd_low_offset"][traded]
    opens = segments.value_at(cumulative, lo, grid.starts)
    closes = segments.value_at(cumulative, hi, grid.ends - 1)
    highs = np.fmax(segment_reduce(np.maximum, row_high, lo, hi, np.nan), np.maximum(opens, closes))
    lows = np.fmin(segment_reduce(np.minimum, row_low, lo, hi, np.nan), np.minimum(opens, closes))
    reset = segments.resets_inside(grid.starts, grid.ends)
    highs[reset] = np.maximum(highs[reset], 0.0)
    lows[reset] = np.minimum(lows[reset], 0.0)
    return {
        "delta": segment_reduce(np.add, delta, lo, hi, 0.0),
        "cvd_open": opens,
        "cvd_high": highs,
        "cvd_low": lows,
        "cvd_close": closes,
    }


def _obi(grid: BarGrid, rows: Rows, obi_from_ns: int | None) -> dict[str, np.ndarray]:
    keep = rows["obi_count"] > 0
    if obi_from_ns is not None:
        keep &= rows["second"] >= obi_from_ns
    sec = rows["second"][keep]
    first, last = rows["obi_first"][keep], rows["obi_last"][keep]
    lo, hi = grid.locate(sec)
    count = segment_reduce(np.add, rows["obi_count"][keep], lo, hi, 0.0).astype(np.int64)
    opens = np.full(len(grid), np.nan)
    carried_in = lo > 0
    opens[carried_in] = last[lo[carried_in] - 1]
    first_only = ~carried_in & (hi > lo)
    opens[first_only] = first[lo[first_only]]
    closes = np.full(len(grid), np.nan)
    known = hi > 0
    closes[known] = last[hi[known] - 1]
    highs = np.fmax(segment_reduce(np.maximum, rows["obi_high"][keep], lo, hi, np.nan), opens)
    lows = np.fmin(segment_reduce(np.minimum, rows["obi_low"][keep], lo, hi, np.nan), opens)
    return {"obi_open": opens, "obi_high": highs, "obi_low": lows, "obi_close": closes, "obi_count": count}


# ---- the same bars from tick arrays (rows built on the way) ------------------------------------------------


def _edges(grid: BarGrid, resets: np.ndarray | Sequence[int]) -> np.ndarray:
    return np.unique(np.concatenate((grid.edges(), np.asarray(resets, dtype=np.int64))))


def trade_bars(
    grid: BarGrid,
    ts: np.ndarray,
    price: np.ndarray,
    size: np.ndarray,
    side: np.ndarray,
    resets: np.ndarray | Sequence[int] = (),
) -> dict[str, np.ndarray]:
    """The OHLC columns of trades sorted by ts (trades before the first bar seed the gap fill and the
    session VWAP)."""
    none = np.zeros(0, dtype=np.int64)
    rows = second_rows(ts, price, size, side, np.zeros(len(ts), np.int8), none, none, _edges(grid, resets))
    return bars_from_rows(grid, rows, ("ohlc",), resets)[0]


def cvd_bars(
    grid: BarGrid,
    ts: np.ndarray,
    size: np.ndarray,
    side: np.ndarray,
    resets: np.ndarray | Sequence[int] = (),
) -> dict[str, np.ndarray]:
    """The CVD columns of trades sorted by ts, restarting at 0 at every reset instant (without resets the
    cumulative value starts at 0 at the first trade of the input)."""
    none = np.zeros(0, dtype=np.int64)
    edges = _edges(grid, resets)
    rows = second_rows(ts, np.zeros(len(ts)), size, side, np.zeros(len(ts), np.int8), none, none, edges)
    columns = bars_from_rows(grid, rows, ("cvd",), resets)[0]
    return {name: columns[name] for name in CVD_COLUMNS}


def last_values(grid: BarGrid, ts: np.ndarray, ticks: pa.Table, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The values of the columns `names` in force at each bar's end: those of the last tick before it (NaN
    before any), read from the ticks at the bars' ends alone."""
    hi = np.searchsorted(ts, grid.ends, side="left")
    known = hi > 0
    out = {}
    for name in names:
        out[name] = np.full(len(grid), np.nan)
        out[name][known] = floats_at(ticks, name, hi[known] - 1)
    return out


def obi_bars(grid: BarGrid, volumes: pa.Table) -> dict[str, np.ndarray]:
    """The OBI columns of a (ts, bid_volume, ask_volume) event series sorted by ts."""
    return _obi(grid, obi_rows(volumes, grid.edges()), None)
