"""Analytics: per-second rows — the one intermediate form every order-flow bar is built from.

A row summarises the events of one *bucket*: a UTC second, split further where a bar window starts or
ends inside it (`edges`), so that every bar window is a whole number of rows. Rows hold only buckets
with at least one trade or OBI event:

* trades: open / high / low / close price, volume, notional (Σ price·size), trade_count,
  buy / sell / unknown volume, how many trades each side method decided (n_recorded … n_unknown),
  delta (Σ side·size) and the running-delta extremes inside the bucket, relative to the
  cumulative value at its start: cvd_high_offset = max(0, max prefix sum of side·size),
  cvd_low_offset = min(0, min prefix sum);
* OBI events (top-of-book quotes, or book updates of the depth book): obi_first, obi_high, obi_low,
  obi_last, obi_count (events with no volume on either side are skipped, see `obi.py`).

`engine.bars_from_rows` turns rows into bars. The tick path builds rows from the ticks of a request;
the 1-second rollups store the rows of whole partitions (`ib_stream.store.rollups`); the live bars
build the rows of their open bars — the same rows, so the same bars, bit for bit.

`hour_rows` classifies the trades of one partition exactly as the order-flow service would with its
context starting at `context_ns`, or continuing from what earlier partitions carry in (`Carry`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pyarrow as pa

from ib_stream.analytics.obi import imbalance, obi_series, top_of_book_volumes
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

ROLLUP_VERSION: Final = 2  # 2: OBI from depth per book update
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


def _groups(ts: np.ndarray, edges: np.ndarray | None = None, per_second: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(bucket start, index of the first element) of each group of sorted ns timestamps, one group per bucket: a
    UTC second, split further at the `edges` that fall inside a second (a bar boundary at 14:00:20.5) — or,
    without `per_second`, the spans between the edges (labelled with their first event before the first edge).
    Coarse buckets give the same first / high / low / last / count per bar (no sum is involved)."""
    ts = np.asarray(ts, dtype=np.int64)
    if len(ts) == 0:
        return ts, np.zeros(0, dtype=np.intp)
    if not per_second and edges is not None:
        bounds = np.concatenate(([ts[0]], edges[(edges > ts[0]) & (edges <= ts[-1])]))
        index = np.searchsorted(ts, bounds, side="left")
        held = np.append(index[1:], len(ts)) > index
        return bounds[held], index[held].astype(np.intp)
    first, last = int(ts[0] - ts[0] % NS_PER_SECOND), int(ts[-1] - ts[-1] % NS_PER_SECOND)
    inner = np.zeros(0, dtype=np.int64) if edges is None else edges[edges % NS_PER_SECOND != 0]
    inner = inner[(inner > first) & (inner <= ts[-1])]
    span = (last - first) // NS_PER_SECOND + 1
    if span <= len(ts):  # dense: search the bucket boundaries in the timestamps (no pass over every element)
        bounds = first + np.arange(span, dtype=np.int64) * NS_PER_SECOND
        if len(inner):  # few: inserted where they fall, not merged by a sort
            inner = np.unique(inner)
            bounds = np.insert(bounds, np.searchsorted(bounds, inner), inner)
        index = np.searchsorted(ts, bounds, side="left")
        held = np.append(index[1:], len(ts)) > index
        return bounds[held], index[held].astype(np.intp)
    start = ts - ts % NS_PER_SECOND
    if len(inner):
        i = np.searchsorted(inner, ts, side="right") - 1
        inside = i >= 0
        start[inside] = np.maximum(start[inside], inner[i[inside]])
    starts = np.concatenate(([0], np.flatnonzero(np.diff(start)) + 1)).astype(np.intp)
    return start[starts], starts


def zero_rows(n: int, schema: pa.Schema = ROLLUP_SCHEMA) -> Rows:
    """`n` rows of `schema`, every value 0 (the columns of a type share one allocation)."""
    ints = [f.name for f in schema if f.type == _I]
    floats_ = [f.name for f in schema if f.type != _I]
    int_block, float_block = np.zeros((len(ints), n), dtype=np.int64), np.zeros((len(floats_), n), dtype=np.float64)
    rows = {name: int_block[i] for i, name in enumerate(ints)} | {
        name: float_block[i] for i, name in enumerate(floats_)
    }
    return {f.name: rows[f.name] for f in schema}


def empty_rows(schema: pa.Schema = ROLLUP_SCHEMA) -> Rows:
    return zero_rows(0, schema)


_OBI_STATS: Final = ("obi_first", "obi_high", "obi_low", "obi_last")


def _put_obi(rows: Rows, seconds: np.ndarray, obi_values: np.ndarray, o_sec: np.ndarray, o_start: np.ndarray) -> None:
    """Fill the OBI columns of `rows` (one per second of `seconds`) from the events grouped as (o_sec, o_start)."""
    for name in _OBI_STATS:
        rows[name][:] = np.nan
    if len(o_sec):
        at = slice(None) if seconds is o_sec else np.searchsorted(seconds, o_sec)
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
    edges: np.ndarray | None = None,
    sides: bool = True,
) -> Rows:
    """The rows of sorted trades (with their side and method) and a sorted OBI event series, one per bucket
    (a second, split at `edges`; see `_groups`). Without `sides` the columns a trade's side decides stay 0."""
    price = np.asarray(price, dtype=np.float64)
    size = np.asarray(size, dtype=np.float64)
    t_sec, t_start = _groups(np.asarray(ts, dtype=np.int64), edges)
    o_sec, o_start = _groups(np.asarray(obi_ts, dtype=np.int64), edges)
    seconds = t_sec if not len(o_sec) else o_sec if not len(t_sec) else np.union1d(t_sec, o_sec)
    rows = zero_rows(len(seconds))
    rows["second"] = seconds
    for name in ("open", "high", "low", "close"):
        rows[name][:] = np.nan
    _put_obi(rows, seconds, obi_values, o_sec, o_start)
    if len(t_sec):
        at = slice(None) if seconds is t_sec else np.searchsorted(seconds, t_sec)
        t_end = np.append(t_start[1:], len(price))
        add = np.add.reduceat
        rows["open"][at] = price[t_start]
        rows["close"][at] = price[t_end - 1]
        rows["high"][at] = np.maximum.reduceat(price, t_start)
        rows["low"][at] = np.minimum.reduceat(price, t_start)
        rows["volume"][at] = add(size, t_start)
        rows["notional"][at] = add(price * size, t_start)
        rows["trade_count"][at] = t_end - t_start
        if not sides:
            return rows
        for name, value in (("buy_volume", 1), ("sell_volume", -1), ("unknown_volume", 0)):
            rows[name][at] = add(np.where(side == value, size, 0.0), t_start)
        for code, name in ((RECORDED, "n_recorded"), (QUOTE, "n_quote"), (TICK, "n_tick"), (UNKNOWN, "n_unknown")):
            rows[name][at] = add((method == code).astype(np.int64), t_start)
        signed = size * np.asarray(side, dtype=np.float64)
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
    sides: TradeSides | None = None  # of each trade read (None for stored rollups)
    obi: Rows | None = None  # the quotes' OBI in rows of its own (`obi_per_second=False`), else in `rows`


def hour_rows(
    trade_table: pa.Table,
    quotes: pa.Table,
    hour_start: int,
    quote_lookback_ns: int,
    context_ns: int | None = None,
    carry: Carry | None = None,
    *,
    edges: np.ndarray | None = None,
    quote_obi: bool = True,
    sensitivity: bool = True,
    obi_per_second: bool = True,
    with_sides: bool = True,
    use_recorded: bool = True,
    inclusive: bool = False,
    max_quote_age_ns: int | None = None,
) -> HourRows:
    """Rows of the trades from `context_ns` (default hour_start) on, classified as the service does with its
    context there (quotes from context − lookback) — or, given the `carry` of the ticks before (since an
    earlier context), as the service does with that context — and (`quote_obi`) the top-of-book OBI of every
    quote from hour_start on. Rows are split at `edges` (bar boundaries inside a second, see `_groups`);
    `use_recorded`, `inclusive` and `max_quote_age_ns` are `side.classify`'s options.

    `sensitive` (computed with `sensitivity`; only stored rollups need it): without a carry, the side of some
    trade could differ under an earlier context: a trade the tick rule could not decide (no price change yet
    since the context), or one decided by the tick rule with no quote in the window (an earlier context could
    reach an older quote).
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
    if not with_sides:  # only the columns no trade side changes: no classification at all
        rows = second_rows(ts, price, size, ts[:0], ts[:0], ts[:0], price[:0], edges, sides=False)
        return HourRows(rows, False, {})
    recorded = recorded_sides(trade_table) if use_recorded else None
    options: dict[str, Any] = {
        "use_recorded": use_recorded,
        "inclusive": inclusive,
        "max_quote_age_ns": max_quote_age_ns,
    }
    if carry is not None and carry.price is not None and len(ts):
        # The previous trade leads the prices so the tick rule sees the change into this partition.
        tick_sides = tick_rule(np.concatenate(([carry.price], price)), carry.direction)[1:]
        sides = classify(ts, price, recorded, quote_arrays, **options)
        redo = sides.method == UNKNOWN
        redo |= sides.method == TICK
        if redo.any():
            by_tick = np.where(redo, tick_sides, sides.side).astype(np.int8)
            method = np.where(redo & (tick_sides != 0), TICK, np.where(redo, UNKNOWN, sides.method)).astype(np.int8)
            sides = TradeSides(by_tick, method)
    else:
        sides = classify(ts, price, recorded, quote_arrays, **options)
    sensitive = sensitivity and carry is None and bool((sides.method == UNKNOWN).any())
    ticked = sides.method == TICK
    if sensitivity and carry is None and ticked.any():
        if quote_arrays is None:
            sensitive = True
        else:
            bid, _ = prevailing_quotes(ts[ticked], *quote_arrays)
            sensitive |= bool(np.isnan(bid).any())
    obi_ts, obi_values = obi_series(top_of_book_volumes(quotes)) if quote_obi else (ts[:0], price[:0])
    in_window = obi_ts >= hour_start
    obi_ts, obi_values = obi_ts[in_window], obi_values[in_window]
    obi = None
    if quote_obi and not obi_per_second:  # the OBI in rows of its own, per span between the edges
        obi = obi_rows_of(obi_ts, obi_values, edges, per_second=False)
        obi_ts, obi_values = obi_ts[:0], obi_values[:0]
    rows = second_rows(ts, price, size, sides.side, sides.method, obi_ts, obi_values, edges)
    moves = np.flatnonzero(np.diff(price)) if len(price) > 1 else np.zeros(0, dtype=np.intp)
    summary = {
        "trades": len(ts),
        "first_price": float(price[0]) if len(ts) else None,
        "last_price": float(price[-1]) if len(ts) else None,
        "last_direction": int(np.sign(price[moves[-1] + 1] - price[moves[-1]])) if len(moves) else 0,
        "quote": [int(quote_ts[-1]), float(bids[-1]), float(asks[-1])] if len(quote_ts) else None,
    }
    return HourRows(rows, sensitive, summary, sides, obi)


DEPTH_ROLLUP_SCHEMA: Final = pa.schema(
    [("second", _I)]
    + [(name, _F) for name in ("obi_first", "obi_high", "obi_low", "obi_last", "obi_end")]
    + [("obi_count", _I), ("events", _I)]
)


def obi_rows(volumes: pa.Table, edges: np.ndarray | None = None) -> Rows:
    """Rows holding only the OBI columns of a (ts, bid_volume, ask_volume) event series sorted by ts (events with
    no volume skipped), one per bucket (see `_groups`)."""
    return obi_rows_of(*obi_series(volumes), edges)


def obi_rows_of(ts: np.ndarray, values: np.ndarray, edges: np.ndarray | None = None, per_second: bool = True) -> Rows:
    """The OBI rows of sorted event times and their imbalance values (no NaN); without `per_second`, one row per
    span between the edges (bars need no finer rows: OBI has no sums)."""
    seconds, starts = _groups(ts, edges, per_second)
    rows = zero_rows(len(seconds))
    rows["second"] = seconds
    _put_obi(rows, seconds, values, seconds, starts)
    return rows


def depth_rows(volumes: pa.Table, edges: np.ndarray | None = None) -> Rows:
    """Per-bucket OBI rows of the (ts, bid_volume, ask_volume) series of a depth book, one event per book update
    (`book.top_volumes`), sorted by ts: the OBI columns of `second_rows` (events with no volume skipped), plus
    `obi_end` = the imbalance after the bucket's last update (NaN when no volume is left) and `events` = the book
    updates of the bucket."""
    ts = ts_ns(volumes)
    values = imbalance(floats(volumes, "bid_volume"), floats(volumes, "ask_volume"))
    keep = ~np.isnan(values)
    seconds, starts = _groups(ts, edges)
    rows = zero_rows(len(seconds), DEPTH_ROLLUP_SCHEMA)
    rows["second"] = seconds
    _put_obi(rows, seconds, values[keep], *_groups(ts[keep], edges))
    ends = np.append(starts[1:], len(ts)).astype(np.intp) if len(ts) else starts
    rows["obi_end"] = values[ends - 1]
    rows["events"] = (ends - starts).astype(np.int64)
    return rows
