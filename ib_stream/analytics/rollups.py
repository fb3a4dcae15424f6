"""1-second order-flow rollups: per-second rows from classified trades and quotes, and bars rebuilt from them.

A rollup row summarises one UTC second that holds at least one trade or one quote event:

* trades: open / high / low / close price, volume, notional (Σ price·size), trade_count,
  buy / sell / unknown volume, how many trades each side method decided (n_recorded … n_unknown),
  delta (Σ side·size) and the running-delta extremes inside the second, relative to the
  cumulative value at the second's start: cvd_high_offset = max(0, max prefix sum of side·size),
  cvd_low_offset = min(0, min prefix sum);
* quotes: the top-of-book imbalance of the second's events (obi_first, obi_high, obi_low,
  obi_last, obi_count; events with no volume on either side are skipped, as in `obi.py`).

`rollup_bars` combines the rows of [context, end) into bars of any grid whose windows start and end on
whole seconds, equal to what `orderflow.trade_bars` / `cvd_bars` and `obi.obi_bars` give from the ticks:
min / max / first / last are exact; sums (volume, notional, delta, the CVD path) are exact whenever the
tick sums are exact in float64 (integer sizes, prices on a binary tick grid) and otherwise equal up to
float rounding, since they are added per second first. CVD OHLC is exact because the path inside a
bar is the cumulative value at each second's start plus that second's offsets, and resets (session
starts) fall on second boundaries.

`hour_rows` computes the rows of one partition from the store, classifying its trades exactly as
`service.OrderFlow` would with its context starting at `context_ns` (see `ib_stream.store.rollups`
for when stored rows stand in for it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pyarrow as pa

from ib_stream.analytics.bars import carry_forward
from ib_stream.analytics.obi import imbalance, obi_series, top_of_book_volumes
from ib_stream.analytics.orderflow import BarGrid, Segments, segment_reduce
from ib_stream.analytics.side import (
    QUOTE,
    RECORDED,
    TICK,
    UNKNOWN,
    TradeSides,
    classify,
    floats,
    prevailing_quotes,
    recorded_sides,
    tick_rule,
    ts_ns,
)
from ib_stream.clock import NS_PER_SECOND

ROLLUP_VERSION: Final = 1
_F = pa.float64()
_I = pa.int64()
ROLLUP_SCHEMA: Final = pa.schema(
    [("second", _I)]
    + [(name, _F) for name in ("open", "high", "low", "close", "volume", "notional")]
    + [(name, _I) for name in ("trade_count", "n_recorded", "n_quote", "n_tick", "n_unknown")]
    + [(name, _F) for name in ("buy_volume", "sell_volume", "unknown_volume", "delta")]
    + [(name, _F) for name in ("cvd_high_offset", "cvd_low_offset")]
    + [(name, _F) for name in ("obi_first", "obi_high", "obi_low", "obi_last")]
    + [("obi_count", _I)]
)
METHOD_COLUMNS: Final = {"recorded": "n_recorded", "quote": "n_quote", "tick": "n_tick", "unknown": "n_unknown"}
Rows = dict[str, np.ndarray]


def _groups(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(second of each group, index of each group's first element) of sorted ns timestamps."""
    seconds = ts - ts % NS_PER_SECOND
    if len(seconds) == 0:
        return seconds, np.zeros(0, dtype=np.intp)
    starts = np.concatenate(([0], np.flatnonzero(np.diff(seconds)) + 1)).astype(np.intp)
    return seconds[starts], starts


def zero_rows(n: int, schema: pa.Schema = ROLLUP_SCHEMA) -> Rows:
    """`n` rows of `schema`, every value 0."""
    return {f.name: np.zeros(n, dtype=np.int64 if f.type == _I else np.float64) for f in schema}


def empty_rows(schema: pa.Schema = ROLLUP_SCHEMA) -> Rows:
    return zero_rows(0, schema)


_OBI_STATS: Final = ("obi_first", "obi_high", "obi_low", "obi_last")


def _put_obi(rows: Rows, seconds: np.ndarray, obi_values: np.ndarray, o_sec: np.ndarray, o_start: np.ndarray) -> None:
    """Fill the OBI columns of `rows` (one per second of `seconds`) from the events grouped as (o_sec, o_start)."""
    for name in _OBI_STATS:
        rows[name][:] = np.nan
    if len(o_sec):
        at = np.searchsorted(seconds, o_sec)
        o_end = np.append(o_start[1:], len(obi_values))
        rows["obi_first"][at] = obi_values[o_start]
        rows["obi_last"][at] = obi_values[o_end - 1]
        rows["obi_high"][at] = np.maximum.reduceat(obi_values, o_start)
        rows["obi_low"][at] = np.minimum.reduceat(obi_values, o_start)
        rows["obi_count"][at] = o_end - o_start


def second_rows(
    ts: np.ndarray,
    price: np.ndarray,
    size: np.ndarray,
    side: np.ndarray,
    method: np.ndarray,
    obi_ts: np.ndarray,
    obi_values: np.ndarray,
) -> Rows:
    """The rollup rows of sorted trades (with their side and method) and a sorted OBI event series."""
    price = np.asarray(price, dtype=np.float64)
    size = np.asarray(size, dtype=np.float64)
    t_sec, t_start = _groups(np.asarray(ts, dtype=np.int64))
    o_sec, o_start = _groups(np.asarray(obi_ts, dtype=np.int64))
    seconds = np.union1d(t_sec, o_sec)
    rows = zero_rows(len(seconds))
    rows["second"] = seconds
    for name in ("open", "high", "low", "close"):
        rows[name][:] = np.nan
    _put_obi(rows, seconds, obi_values, o_sec, o_start)
    if len(t_sec):
        at = np.searchsorted(seconds, t_sec)
        t_end = np.append(t_start[1:], len(price))
        signed = size * np.asarray(side, dtype=np.float64)
        add = np.add.reduceat
        rows["open"][at] = price[t_start]
        rows["close"][at] = price[t_end - 1]
        rows["high"][at] = np.maximum.reduceat(price, t_start)
        rows["low"][at] = np.minimum.reduceat(price, t_start)
        rows["volume"][at] = add(size, t_start)
        rows["notional"][at] = add(price * size, t_start)
        rows["trade_count"][at] = t_end - t_start
        for name, value in (("buy_volume", 1), ("sell_volume", -1), ("unknown_volume", 0)):
            rows[name][at] = add(np.where(side == value, size, 0.0), t_start)
        for code, name in ((RECORDED, "n_recorded"), (QUOTE, "n_quote"), (TICK, "n_tick"), (UNKNOWN, "n_unknown")):
            rows[name][at] = add((method == code).astype(np.int64), t_start)
        rows["delta"][at] = add(signed, t_start)
        # Prefix sums restarting at each second: one running sum less its value before the second.
        running = np.cumsum(signed)
        before = np.concatenate(([0.0], running))[t_start]
        prefix = running - np.repeat(before, t_end - t_start)
        rows["cvd_high_offset"][at] = np.maximum(np.maximum.reduceat(prefix, t_start), 0.0)
        rows["cvd_low_offset"][at] = np.minimum(np.minimum.reduceat(prefix, t_start), 0.0)
    return rows


def rows_table(rows: Rows) -> pa.Table:
    return pa.table({f.name: pa.array(rows[f.name], f.type) for f in ROLLUP_SCHEMA}, schema=ROLLUP_SCHEMA)


def table_rows(table: pa.Table) -> Rows:
    return {f.name: table.column(f.name).to_numpy() for f in ROLLUP_SCHEMA}


def concat_rows(parts: Sequence[Rows], schema: pa.Schema = ROLLUP_SCHEMA) -> Rows:
    if not parts:
        return empty_rows(schema)
    return {f.name: np.concatenate([p[f.name] for p in parts]) for f in schema}


@dataclass(frozen=True, slots=True)
class Carry:
    """What the service's classification carries into a partition from the ticks before it (since its context):
    the last trade price, the tick-rule direction in force at it, and the last quote (ts, bid, ask)."""

    price: float | None = None
    direction: int = 0
    quote: tuple[int, float, float] | None = None

    def after(self, summary: dict[str, Any], quotes_from_ns: int) -> Carry:
        """The carry after a partition with this `summary` (see `hour_rows`); quotes before quotes_from_ns are out
        of the service's window and are not carried."""
        price, direction = self.price, self.direction
        if summary["trades"]:
            if summary["last_direction"]:
                direction = summary["last_direction"]
            elif price is not None and summary["first_price"] != price:
                direction = 1 if summary["first_price"] > price else -1
            price = summary["last_price"]
        quote = self.quote
        if summary["quote"] is not None and summary["quote"][0] >= quotes_from_ns:
            quote = (int(summary["quote"][0]), float(summary["quote"][1]), float(summary["quote"][2]))
        return Carry(price, direction, quote)


@dataclass(frozen=True, slots=True)
class HourRows:
    """A partition's rows, whether a trade's side depends on ticks before it, and what it carries to the next."""

    rows: Rows
    sensitive: bool
    summary: dict[str, Any]


def hour_rows(
    trade_table: pa.Table,
    quotes: pa.Table,
    hour_start: int,
    quote_lookback_ns: int,
    context_ns: int | None = None,
    carry: Carry | None = None,
) -> HourRows:
    """Rows of [hour_start, end): the OBI of every quote, the trades from `context_ns` (default hour_start)
    on, classified as the service does with its context there (quotes from context − lookback) — or, given
    the `carry` of the ticks before (since an earlier context), as the service does with that context.

    `sensitive`: without a carry, the side of some trade could differ under an earlier context: a trade the
    tick rule could not decide (no price change yet since the context), or one decided by the tick rule
    with no quote in the window (an earlier context could reach an older quote).
    """
    context = hour_start if context_ns is None else context_ns
    ts, price, size = ts_ns(trade_table), floats(trade_table, "price"), floats(trade_table, "size")
    quote_ts, bids, asks = ts_ns(quotes), floats(quotes, "bid_price"), floats(quotes, "ask_price")
    usable = quote_ts >= context - quote_lookback_ns
    quote_ts, bids, asks = quote_ts[usable], bids[usable], asks[usable]
    if carry is not None and carry.quote is not None and (not len(quote_ts) or carry.quote[0] < quote_ts[0]):
        quote_ts = np.concatenate(([carry.quote[0]], quote_ts))
        bids, asks = np.concatenate(([carry.quote[1]], bids)), np.concatenate(([carry.quote[2]], asks))
    quote_arrays = (quote_ts, bids, asks) if len(quote_ts) else None
    recorded = recorded_sides(trade_table)
    if carry is not None and carry.price is not None and len(ts):
        # The previous trade leads the prices so the tick rule sees the change into this partition.
        tick_sides = tick_rule(np.concatenate(([carry.price], price)), carry.direction)[1:]
        sides = classify(ts, price, recorded, quote_arrays)
        redo = sides.method == UNKNOWN
        redo |= sides.method == TICK
        if redo.any():
            by_tick = np.where(redo, tick_sides, sides.side).astype(np.int8)
            method = np.where(redo & (tick_sides != 0), TICK, np.where(redo, UNKNOWN, sides.method)).astype(np.int8)
            sides = TradeSides(by_tick, method)
    else:
        sides = classify(ts, price, recorded, quote_arrays)
    sensitive = carry is None and bool((sides.method == UNKNOWN).any())
    ticked = sides.method == TICK
    if carry is None and ticked.any():
        if quote_arrays is None:
            sensitive = True
        else:
            bid, _ = prevailing_quotes(ts[ticked], *quote_arrays)
            sensitive |= bool(np.isnan(bid).any())
    obi_ts, obi_values = obi_series(top_of_book_volumes(quotes))
    in_window = obi_ts >= hour_start
    rows = second_rows(ts, price, size, sides.side, sides.method, obi_ts[in_window], obi_values[in_window])
    moves = np.flatnonzero(np.diff(price)) if len(price) > 1 else np.zeros(0, dtype=np.intp)
    summary = {
        "trades": len(ts),
        "first_price": float(price[0]) if len(ts) else None,
        "last_price": float(price[-1]) if len(ts) else None,
        "last_direction": int(np.sign(price[moves[-1] + 1] - price[moves[-1]])) if len(moves) else 0,
        "quote": [int(quote_ts[-1]), float(bids[-1]), float(asks[-1])] if len(quote_ts) else None,
    }
    return HourRows(rows, sensitive, summary)


def rollup_bars(
    grid: BarGrid,
    rows: Rows,
    kinds: Sequence[str],
    resets: np.ndarray | Sequence[int] = (),
    obi_from_ns: int | None = None,
    trades_from_ns: int | None = None,
    range_ns: tuple[int, int] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Bars of `grid` from the rows of [context, end) — the columns of `trade_bars`, `cvd_bars`, `obi_bars`
    (as asked in `kinds`) — and the side-method counts of the trades in the grid's windows.

    OBI events count from `obi_from_ns` on (the service reads quotes from the range start minus its lookback),
    trades from `trades_from_ns` on (the context start); side methods count the trades of `range_ns`
    (default: of the grid's windows).
    """
    out: dict[str, np.ndarray] = {}
    methods: dict[str, int] = {}
    traded = rows["trade_count"] > 0
    if trades_from_ns is not None:
        traded &= rows["second"] >= trades_from_ns
    sec = rows["second"][traded]
    lo, hi = grid.locate(sec)
    add = np.add
    if "ohlc" in kinds or "cvd" in kinds:
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
        t = {name: rows[name][traded] for name in rows}
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
        out.update(
            open=opens,
            high=highs,
            low=lows,
            close=carried,
            volume=volume,
            vwap=vwap,
            trade_count=segment_reduce(add, t["trade_count"], lo, hi, 0.0).astype(np.int64),
            buy_volume=segment_reduce(add, t["buy_volume"], lo, hi, 0.0),
            sell_volume=segment_reduce(add, t["sell_volume"], lo, hi, 0.0),
            unknown_volume=segment_reduce(add, t["unknown_volume"], lo, hi, 0.0),
            session_vwap=session_vwap,
            empty=~filled,
        )
    if "cvd" in kinds:
        if "ohlc" not in kinds:
            out["empty"] = hi == lo
        out.update(_cvd(grid, sec, rows["delta"][traded], rows, traded, lo, hi, resets))
    if "obi" in kinds:
        out.update(_obi(grid, rows, obi_from_ns))
    return out, methods


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
    cumulative = segments.cumsum(delta)  # the value at each second's end
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


DEPTH_ROLLUP_SCHEMA: Final = pa.schema(
    [("second", _I)]
    + [(name, _F) for name in ("obi_first", "obi_high", "obi_low", "obi_last", "obi_end")]
    + [("obi_count", _I), ("events", _I)]
)


def depth_rows(volumes: pa.Table) -> Rows:
    """Per-second OBI rows of a (ts, bid_volume, ask_volume) series of depth events, sorted by ts: the OBI columns
    of `second_rows` (events with no volume skipped), plus `obi_end` = the imbalance after the second's last
    event (NaN when no volume is left) and `events` = all depth events of the second."""
    ts = ts_ns(volumes)
    values = imbalance(floats(volumes, "bid_volume"), floats(volumes, "ask_volume"))
    keep = ~np.isnan(values)
    seconds, starts = _groups(ts)
    rows = zero_rows(len(seconds), DEPTH_ROLLUP_SCHEMA)
    rows["second"] = seconds
    _put_obi(rows, seconds, values[keep], *_groups(ts[keep]))
    ends = np.append(starts[1:], len(ts)).astype(np.intp) if len(ts) else starts
    rows["obi_end"] = values[ends - 1]
    rows["events"] = (ends - starts).astype(np.int64)
    return rows


def obi_bars_from_rows(grid: BarGrid, rows: Rows, obi_from_ns: int | None = None) -> dict[str, np.ndarray]:
    """OBI bars (the columns of `obi.obi_bars`) from per-second rows with OBI columns, events from `obi_from_ns`."""
    return _obi(grid, rows, obi_from_ns)


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
