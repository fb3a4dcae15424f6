"""Live order-flow bars: an incremental per-contract bar builder fed with records as they arrive.

`LiveBarBuilder` keeps the forming bar (OHLC, volume, buy / sell / unknown volume, VWAP, session
VWAP, CVD o/h/l/c with the session reset, OBI o/h/l/c from top-of-book sizes or the top N depth
levels) and returns *upserts*: a row whose `ts` was sent before replaces it, a new `ts` is
appended. A bar is final once a later bar has started. Memory is bounded: the builder keeps the
last `window` bars and a few thousand quotes; only the two newest bars are still mutable (a tick
up to one bar late amends the previous bar; older ticks are counted in `late_ticks` and dropped).
Streams are delivered each in order but interleaved by batch: a trade whose prevailing quote arrives
after it is classified again when the quote comes, so the sides do not depend on arrival order.

Definitions are those of the batch functions (`side.classify`, `orderflow.trade_bars`,
`orderflow.cvd_bars`, `obi.obi_bars`; docs/concepts/order-flow.md): fed the same ticks in time
order, a live bar equals the batch bar over the same window with the same reset instants.
"""

from __future__ import annotations

import bisect
import collections
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pyarrow as pa

from ib_stream.analytics.book import OrderBook
from ib_stream.analytics.obi import imbalance as batch_imbalance
from ib_stream.analytics.side import classify, floats, recorded_sides, tick_rule, ts_ns
from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import StreamKey, TickType
from ib_stream.errors import ValidationError

QUOTE_HISTORY: Final = 4096  # quotes kept for the as-of lookup of trades that arrive after newer quotes
QUOTE_LOOKBACK_NS: Final = 300 * NS_PER_SECOND  # as service.OrderFlow: quotes read before the first trade
MAX_CONTEXT_NS: Final = 4 * 86_400 * NS_PER_SECOND  # as service.OrderFlow: trades read at most this far back
SEED_TRADES: Final = ["ts", "price", "size", "side"]


def imbalance(bid_volume: float, ask_volume: float) -> float:
    """(bid − ask) / (bid + ask) in [−1, 1]; NaN when both are 0 (such events are skipped)."""
    total = bid_volume + ask_volume
    return (bid_volume - ask_volume) / total if total > 0 else math.nan


class _Ohlc:
    """Open/high/low/close of samples that may arrive out of time order (open = earliest, close = latest)."""

    __slots__ = ("close", "close_ts", "count", "high", "low", "open", "open_ts")

    def __init__(self) -> None:
        self.open = self.high = self.low = self.close = math.nan
        self.open_ts = self.close_ts = self.count = 0

    def add(self, ts: int, value: float) -> None:
        self.count += 1
        if self.count == 1:
            self.open = self.high = self.low = self.close = value
            self.open_ts = self.close_ts = ts
            return
        if ts < self.open_ts:
            self.open, self.open_ts = value, ts
        if ts >= self.close_ts:
            self.close, self.close_ts = value, ts
        self.high = max(self.high, value)
        self.low = min(self.low, value)


@dataclass(slots=True)
class _Trade:
    ts: int
    session: int
    signed: float  # side · size (0 for an unknown side)
    price: float
    size: float
    tick: int = 0  # the tick rule's direction at this trade
    recorded: bool = False  # the side came with the trade


@dataclass(slots=True)
class _Cum:
    """Cumulative values since the last reset, after some trade: CVD and the session VWAP's sums."""

    session: int | None = None  # the reset instant the values count from (None: no trade yet)
    cvd: float = 0.0
    notional: float = 0.0
    volume: float = 0.0

    def add(self, trade: _Trade) -> None:
        if trade.session != self.session:  # a reset passed: start from zero
            self.session, self.cvd, self.notional, self.volume = trade.session, 0.0, 0.0, 0.0
        self.cvd += trade.signed
        self.notional += trade.price * trade.size
        self.volume += trade.size

    def copy(self) -> _Cum:
        return _Cum(self.session, self.cvd, self.notional, self.volume)


class _Bar:
    """One bar's accumulators; `trades` (sorted by ts) is kept only while the bar may still change."""

    __slots__ = ("base", "buy", "carry_obi", "carry_price", "cum", "final", "key_end", "key_start", "notional", "obi",
                 "path_high", "path_low", "price", "sell", "start", "trades", "unknown", "volume")  # fmt: skip

    def __init__(self, start: int, key_start: int, key_end: int, base: _Cum, carry_price: float, carry_obi: float):
        self.start = start
        self.key_start, self.key_end = key_start, key_end  # reset instants in force at the start and at the end
        self.carry_price, self.carry_obi = carry_price, carry_obi  # values in force before the bar
        self.price = _Ohlc()
        self.obi = _Ohlc()
        self.volume = self.notional = self.buy = self.sell = self.unknown = 0.0
        self.trades: list[_Trade] | None = []
        self.final = False
        self.rebase(base)

    @property
    def close(self) -> float:
        return self.carry_price if self.price.count == 0 else self.price.close

    @property
    def obi_close(self) -> float:
        return self.carry_obi if self.obi.count == 0 else self.obi.close

    def add_trade(self, trade: _Trade) -> None:
        self.price.add(trade.ts, trade.price)
        self.volume += trade.size
        self.notional += trade.price * trade.size
        if trade.signed > 0:
            self.buy += trade.size
        elif trade.signed < 0:
            self.sell += trade.size
        else:
            self.unknown += trade.size
        assert self.trades is not None
        if not self.trades or trade.ts >= self.trades[-1].ts:
            self.trades.append(trade)
            self._step(trade)
        else:  # a late trade inside the bar: the cumulative path is recomputed
            bisect.insort_right(self.trades, trade, key=lambda t: t.ts)
            self.rebase(self.base)

    def set_side(self, trade: _Trade, side: int) -> None:
        """Change a trade's side (its prevailing quote arrived after it); the caller rebases the bar."""
        for sign, weight in ((trade.signed, -trade.size), (side, trade.size)):
            if sign > 0:
                self.buy += weight
            elif sign < 0:
                self.sell += weight
            else:
                self.unknown += weight
        trade.signed = side * trade.size

    def rebase(self, base: _Cum) -> None:
        """Recompute the cumulative path from `base`, the values after the previous bar."""
        self.base, self.cum = base, base.copy()
        self.path_high = self.path_low = math.nan
        for trade in self.trades or ():
            self._step(trade)

    def _step(self, trade: _Trade) -> None:
        self.cum.add(trade)
        self.path_high = self.cum.cvd if math.isnan(self.path_high) else max(self.path_high, self.cum.cvd)
        self.path_low = self.cum.cvd if math.isnan(self.path_low) else min(self.path_low, self.cum.cvd)


class LiveBarBuilder:
    """Incremental bars of one contract; `update(items)` returns the upserts the items caused."""

    def __init__(
        self,
        bar_ns: int,
        *,
        window: int = 1000,
        session_of: Callable[[int], int] | None = None,
        book: OrderBook | None = None,
        quotes_until_depth: bool = False,
        depth_levels: int = 10,
        trade_type: TickType = TickType.LAST,
        fill_gaps: bool = True,
    ) -> None:
        if window < 2:
            raise ValidationError("window", window, "must be at least 2 bars")
        self.bar_ns = bar_ns
        self.window = window
        self.session_of: Callable[[int], int] = session_of or (lambda ts: 0)
        self.book = book  # OBI from the top `depth_levels` of the book when given, else top of book
        self.quotes_until_depth = quotes_until_depth  # obi_source auto: top of book until depth arrives
        self.depth_levels = depth_levels
        self.trade_type = trade_type
        self.fill_gaps = fill_gaps  # emit the empty bars between two ticks (at most `window`)
        self.bars: collections.deque[_Bar] = collections.deque(maxlen=window)
        self.late_ticks = 0
        self._quote_ts: list[int] = []
        self._quotes: list[tuple[float, float]] = []  # (bid, ask) at _quote_ts
        self._last_price: float | None = None
        self._last_direction = 0
        self._changed: set[int] = set()
        self._last_trade_ts = 0
        self._stale = False  # a mutable bar's sides changed: its cumulative path is rebuilt at the next drain
        self._seed = (_Cum(), math.nan, math.nan)  # what the first bar starts from: cumulative, close, OBI

    @property
    def _obi_from_book(self) -> bool:
        return self.book is not None and not (self.quotes_until_depth and self.book.events == 0)

    @property
    def tick_types(self) -> tuple[TickType, ...]:
        """The streams this builder reads."""
        types = (TickType.BID_ASK, self.trade_type)
        return (*types, TickType.DEPTH) if self.book is not None else types

    # ---- input ---------------------------------------------------------------------------------------
    def context_start(self, until_ns: int) -> int:
        """Where `seed` wants its trades from: the start of the session in progress at `until_ns` (at most
        MAX_CONTEXT_NS back); its quotes from QUOTE_LOOKBACK_NS before that."""
        return max(self.session_of(until_ns), until_ns - MAX_CONTEXT_NS)

    def seed(self, trades: pa.Table, quotes: pa.Table, depth: pa.Table | None, until_ns: int) -> None:
        """Start from the state in force at `until_ns` as the batch service computes it for a range starting
        there (vectorised): `trades` (ts, price, size, side) from `context_start(until_ns)`, `quotes` from
        QUOTE_LOOKBACK_NS before that, `depth` the depth ticks of the hour before `until_ns` (with a book).
        Call it before the first tick."""
        reset = self.session_of(until_ns)
        ts, price, size = ts_ns(trades), floats(trades, "price"), floats(trades, "size")
        quote_ts, bid, ask = ts_ns(quotes), floats(quotes, "bid_price"), floats(quotes, "ask_price")
        cum, close, obi = _Cum(), math.nan, math.nan
        if len(ts):
            sides = classify(ts, price, recorded_sides(trades), (quote_ts, bid, ask) if len(quote_ts) else None)
            cum = _Cum(reset, float((sides.side * size).sum()), float((price * size).sum()), float(size.sum()))
            close = self._last_price = float(price[-1])
            self._last_trade_ts = int(ts[-1])
            self._last_direction = int(tick_rule(price)[-1])
        keep = slice(max(len(quote_ts) - QUOTE_HISTORY, 0), None)
        self._quote_ts, self._quotes = (
            quote_ts[keep].tolist(),
            list(zip(bid[keep].tolist(), ask[keep].tolist(), strict=True)),
        )
        if self.book is not None and depth is not None:  # the book from the hour boundary before
            self.book.apply_table(depth)
            obi = imbalance(*self.book.top_volumes(self.depth_levels))
        if not self._obi_from_book:  # the OBI in force: the last quote with volume of the batch's look-back
            values = batch_imbalance(floats(quotes, "bid_size"), floats(quotes, "ask_size"))
            found = np.flatnonzero(~np.isnan(values) & (quote_ts >= until_ns - QUOTE_LOOKBACK_NS))
            obi = float(values[found[-1]]) if len(found) else math.nan
        self._seed = (cum, close, obi)

    def update(self, items: Iterable[tuple[StreamKey, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Apply (stream, record) items (put in ts order first, stably) and return the bar upserts."""
        for stream, record in sorted(items, key=lambda item: item[1]["ts"]):
            self.apply(stream.tick_type, record)
        return self.drain()

    def apply(self, tick_type: TickType, record: dict[str, Any]) -> None:
        """Apply one record; its upserts are collected until `drain`."""
        if tick_type == TickType.BID_ASK:
            self._quote(record)
        elif tick_type == self.trade_type:
            self._trade(record)
        elif tick_type == TickType.DEPTH and self.book is not None:
            self.book.apply(record)
            self._obi_event(record["ts"], *self.book.top_volumes(self.depth_levels))

    def _quote(self, record: dict[str, Any]) -> None:
        ts = record["ts"]
        i = bisect.bisect_right(self._quote_ts, ts)
        self._quote_ts.insert(i, ts)
        self._quotes.insert(i, (record["bid_price"], record["ask_price"]))
        if ts < self._last_trade_ts:
            self._requote(ts, self._quote_ts[i + 1] if i + 1 < len(self._quote_ts) else None)
        if len(self._quote_ts) > 2 * QUOTE_HISTORY:
            del self._quote_ts[:QUOTE_HISTORY], self._quotes[:QUOTE_HISTORY]
        if not self._obi_from_book:
            self._obi_event(ts, record["bid_size"], record["ask_size"])

    def _obi_event(self, ts: int, bid_volume: float, ask_volume: float) -> None:
        value = imbalance(bid_volume, ask_volume)
        if math.isnan(value):
            return
        bar = self._bar_for(ts)
        if bar is not None:
            bar.obi.add(ts, value)
            self._touched(bar)

    def _trade(self, record: dict[str, Any]) -> None:
        ts, price, size = record["ts"], float(record["price"]), float(record["size"])
        tick = self._last_direction  # the tick rule: the direction of the last price change
        if self._last_price is not None and price != self._last_price:
            tick = 1 if price > self._last_price else -1
        self._last_price, self._last_direction = price, tick
        self._last_trade_ts = max(self._last_trade_ts, ts)
        recorded = record.get("side") in (1, -1)
        side = int(record["side"]) if recorded else self._quote_side(ts, price) or tick
        bar = self._bar_for(ts)
        if bar is not None:
            bar.add_trade(_Trade(ts, self.session_of(ts), side * size, price, size, tick, recorded))
            self._touched(bar)

    def _quote_side(self, ts: int, price: float) -> int:
        """The quote rule against the last quote stamped strictly before `ts` (0: undecided), as side.classify."""
        i = bisect.bisect_left(self._quote_ts, ts) - 1
        if i >= 0:
            bid, ask = self._quotes[i]
            if 0 < bid < ask:  # a locked or crossed quote says nothing about the aggressor
                if price >= ask:
                    return 1
                if price <= bid:
                    return -1
        return 0

    def _requote(self, quote_ts: int, next_ts: int | None) -> None:
        """A quote arrived after trades stamped later: the trades it now prevails for, in (quote_ts, next_ts],
        are classified again (only in the bars still mutable)."""
        for bar in list(self.bars)[-2:]:
            trades = bar.trades
            if not trades or trades[-1].ts <= quote_ts:
                continue
            lo = bisect.bisect_right(trades, quote_ts, key=lambda t: t.ts)
            hi = len(trades) if next_ts is None else bisect.bisect_right(trades, next_ts, key=lambda t: t.ts)
            for trade in trades[lo:hi]:
                if trade.recorded:
                    continue
                side = self._quote_side(trade.ts, trade.price) or trade.tick
                if side * trade.size != trade.signed:
                    bar.set_side(trade, side)
                    self._stale = True
                    self._changed.add(bar.start)

    # ---- bars ----------------------------------------------------------------------------------------
    def _bar_for(self, ts: int) -> _Bar | None:
        """The bar of `ts`, opening it (and closing the ones before) when new; None when too late."""
        start = ts - ts % self.bar_ns
        if self.bars:
            forming = self.bars[-1]
            if start == forming.start:
                return forming
            if start < forming.start:
                if len(self.bars) >= 2 and self.bars[-2].start == start:
                    return self.bars[-2]
                self.late_ticks += 1
                return None
            forming.final = True
            self._changed.add(forming.start)
            if self.fill_gaps:
                first = max(forming.start + self.bar_ns, start - (self.window - 1) * self.bar_ns)
                for gap in range(first, start, self.bar_ns):
                    self._open(gap).final = True
        return self._open(start)

    def _open(self, start: int) -> _Bar:
        key_start, key_end = self.session_of(start), self.session_of(start + self.bar_ns - 1)
        if self.bars:
            self._refresh()  # before the previous bar stops being mutable
            previous = self.bars[-1]
            bar = _Bar(start, key_start, key_end, previous.cum.copy(), previous.close, previous.obi_close)
            if len(self.bars) >= 2:
                self.bars[-2].trades = None
        else:
            cum, close, obi = self._seed
            bar = _Bar(start, key_start, key_end, cum.copy(), close, obi)
        self.bars.append(bar)
        self._changed.add(start)
        return bar

    def _touched(self, bar: _Bar) -> None:
        self._changed.add(bar.start)
        forming = self.bars[-1]
        if bar is not forming:  # the previous bar changed: the forming bar continues from its new end
            forming.rebase(bar.cum.copy())
            forming.carry_price, forming.carry_obi = bar.close, bar.obi_close
            self._changed.add(forming.start)

    # ---- output --------------------------------------------------------------------------------------
    def drain(self) -> list[dict[str, Any]]:
        """The upserts since the last drain, oldest first (bars that already left the window are skipped)."""
        self._refresh()
        if not self._changed:
            return []
        changed, self._changed = self._changed, set()
        return [bar_row(bar) for bar in self.bars if bar.start in changed]

    def _refresh(self) -> None:
        """Rebuild the cumulative path of the mutable bars after sides changed (see `_requote`)."""
        if not self._stale:
            return
        self._stale = False
        forming = self.bars[-1]
        if len(self.bars) >= 2 and self.bars[-2].trades is not None:
            previous = self.bars[-2]
            previous.rebase(previous.base)
            forming.rebase(previous.cum.copy())
        else:
            forming.rebase(forming.base)
        self._changed.add(forming.start)

    def snapshot(self) -> list[dict[str, Any]]:
        """Every bar in the window, oldest first (the forming one last, not final)."""
        return [bar_row(bar) for bar in self.bars]


def bar_row(bar: _Bar) -> dict[str, Any]:
    """A bar as a row with the batch columns (see orderflow.OHLC_COLUMNS, CVD_COLUMNS, obi.OBI_COLUMNS)."""
    empty = bar.price.count == 0
    close = bar.close
    # The running values at the bar's start and end instants: 0 / NaN when a reset passed since the last trade.
    cvd_open = bar.base.cvd if bar.base.session == bar.key_start else 0.0
    at_end = bar.cum.session == bar.key_end
    cvd_close = bar.cum.cvd if at_end else 0.0
    cvd_high = max(cvd_open, cvd_close) if math.isnan(bar.path_high) else max(bar.path_high, cvd_open, cvd_close)
    cvd_low = min(cvd_open, cvd_close) if math.isnan(bar.path_low) else min(bar.path_low, cvd_open, cvd_close)
    if bar.key_start != bar.key_end:  # a reset inside the bar: the path passes through 0
        cvd_high, cvd_low = max(cvd_high, 0.0), min(cvd_low, 0.0)
    obi_open = bar.obi.open if math.isnan(bar.carry_obi) else bar.carry_obi
    return {
        "ts": bar.start,
        "final": bar.final,
        "session": bar.key_end,
        "open": close if empty else bar.price.open,
        "high": close if empty else bar.price.high,
        "low": close if empty else bar.price.low,
        "close": close,
        "volume": bar.volume,
        "vwap": bar.notional / bar.volume if bar.volume > 0 else math.nan,
        "trade_count": bar.price.count,
        "buy_volume": bar.buy,
        "sell_volume": bar.sell,
        "unknown_volume": bar.unknown,
        "session_vwap": bar.cum.notional / bar.cum.volume if at_end and bar.cum.volume > 0 else math.nan,
        "empty": empty,
        "delta": bar.buy - bar.sell,
        "cvd_open": cvd_open,
        "cvd_high": cvd_high,
        "cvd_low": cvd_low,
        "cvd_close": cvd_close,
        "obi_open": obi_open,
        "obi_high": obi_open if bar.obi.count == 0 else max(bar.obi.high, obi_open),
        "obi_low": obi_open if bar.obi.count == 0 else min(bar.obi.low, obi_open),
        "obi_close": bar.obi_close,
        "obi_count": bar.obi.count,
    }


__all__ = ["LiveBarBuilder", "bar_row", "imbalance"]
