"""Analytics: live order-flow bars — the bar engine fed one record at a time, for the live bar streams, the
JSON sink and the alerts.

`LiveBarBuilder` holds the ticks of the *open* bars (those that may still change) and a carry of
everything before them: two synthetic rows (the trade row whose close, session sums and cumulative delta
continue the batch cumsums exactly, and the OBI in force) and the classification's `Carry` (last price,
tick direction, last quote). At each `drain` it classifies the open bars' trades and builds their rows
exactly as the rollups do (`rows.hour_rows` with the carry), prepends the carry rows and calls
`engine.bars_from_rows` — the batch implementation, so a live bar equals the batch bar over the same
ticks, bit for bit, whatever order the streams arrive in.

Finality: a bar [start, end) is final once the watermark — the latest event time seen on the input
streams, never past the wall clock when the owner passes it (`update(now_ns=...)`) — has passed end +
`lateness_ns`. A tick ahead of the clock cannot make bars final early, and one further ahead than
`max_ahead_ns` (a bad tick stored before event times were checked) is ignored and counted (`ahead_ticks`). Final bars never change again: they are sent once with
`final: true`, then frozen into the carry. A tick older than the oldest open bar is late: it is
counted (`late_ticks`), not applied, and reported (`late_since`) so the owner can re-seed from the store
and send the affected bars as revisions (see `ib_stream.live.feed`).

OBI events are top-of-book quotes, or whole book updates of the depth book (the depth ticks that share a
timestamp: the value after the last of them; `obi_source` auto uses quotes until the first depth tick).
Memory is bounded: the open bars' ticks and the last `window` bar rows.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import pyarrow as pa

from ib_stream.analytics.book import OrderBook
from ib_stream.analytics.engine import BAR_COLUMNS, bars_from_rows
from ib_stream.analytics.grid import BarGrid
from ib_stream.analytics.obi import VOLUMES_SCHEMA, imbalance
from ib_stream.analytics.rows import Carry, HourRows, Rows, concat_rows, hour_rows, obi_rows, zero_rows
from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import StreamKey, TickType
from ib_stream.errors import ValidationError

QUOTE_LOOKBACK_NS: Final = 300 * NS_PER_SECOND  # as service.OrderFlow: quotes read before the first trade
MAX_CONTEXT_NS: Final = 4 * 86_400 * NS_PER_SECOND  # as service.OrderFlow: trades read at most this far back
SEED_TRADES: Final = ["ts", "price", "size", "side"]
_TS = pa.timestamp("ns", tz="UTC")
_TRADES_SCHEMA: Final = pa.schema([("ts", _TS), ("price", pa.float64()), ("size", pa.float64()), ("side", pa.int8())])
_QUOTES_SCHEMA: Final = pa.schema(
    [("ts", _TS)] + [(n, pa.float64()) for n in ("bid_price", "bid_size", "ask_price", "ask_size")]
)


@dataclass(slots=True)
class LiveBar:
    """One bar of the window: its start and its last row (see `bar_row` keys)."""

    start: int
    row: dict[str, Any]

    @property
    def final(self) -> bool:
        return bool(self.row["final"])


@dataclass(slots=True)
class _Ticks:
    """Ticks in arrival order."""

    trades: list[tuple[int, float, float, int]] = field(default_factory=list)  # ts, price, size, side (0: none)
    quotes: list[tuple[int, float, float, float, float]] = field(default_factory=list)  # ts, bid, bid sz, ask, ask sz
    obi: list[tuple[int, float, float]] = field(default_factory=list)  # ts, bid volume, ask volume

    def split(self, at: int) -> _Ticks:
        """Remove and return the ticks before `at`."""
        head = _Ticks()
        for name in ("trades", "quotes", "obi"):
            kept: list[Any] = []
            gone: list[Any] = []
            for item in getattr(self, name):
                (gone if item[0] < at else kept).append(item)
            setattr(self, name, kept)
            setattr(head, name, gone)
        return head


@dataclass(slots=True)
class _Open:
    """The open bars (from `since`): their settled seconds as rows (before `settled`, past the watermark less the
    lateness: computed once, not at every drain) and the ticks after, in arrival order. A tick for a settled
    second (rare) makes them open again."""

    since: int
    settled: int
    carry: Carry = field(default_factory=Carry)  # the classification's state at `since`
    rows: Rows = field(default_factory=lambda: zero_rows(0))
    obi_rows: Rows = field(default_factory=lambda: zero_rows(0))
    settled_ticks: _Ticks = field(default_factory=_Ticks)  # the ticks the rows were made from
    ticks: _Ticks = field(default_factory=_Ticks)

    def unsettle(self) -> None:
        """Forget the rows: every tick since `since` is open again (a tick arrived for a settled second)."""
        for name in ("trades", "quotes", "obi"):
            setattr(self.ticks, name, getattr(self.settled_ticks, name) + getattr(self.ticks, name))
        self.settled_ticks = _Ticks()
        self.rows, self.obi_rows, self.settled = zero_rows(0), zero_rows(0), self.since


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
        lateness_ns: int = 0,
    ) -> None:
        if window < 2:
            raise ValidationError("window", window, "must be at least 2 bars")
        if lateness_ns < 0:
            raise ValidationError("lateness", lateness_ns, "must not be negative")
        self.bar_ns = bar_ns
        self.window = window
        self.session_of: Callable[[int], int] = session_of or (lambda ts: 0)
        self.book = book  # OBI from the top `depth_levels` of the book when given, else top of book
        self.quotes_until_depth = quotes_until_depth  # obi_source auto: top of book until depth arrives
        self.depth_levels = depth_levels
        self.trade_type = trade_type
        self.fill_gaps = fill_gaps  # emit the empty bars between two ticks (at most `window`)
        self.lateness_ns = lateness_ns
        self.bars: collections.deque[LiveBar] = collections.deque(maxlen=window)
        self.late_ticks = 0
        self.ahead_ticks = 0  # ticks ignored for an event time too far ahead of the clock
        self.revisions = 0  # re-seeds by the owner after late ticks
        self.late_since: int | None = None  # the earliest late tick since the owner last re-seeded
        self.watermark = 0
        self.quotes_from = 0  # quotes older than this are outside the classification's window
        self._open: _Open | None = None  # None until the first tick or the seed
        self._carry = Carry()
        self._trade_carry = zero_rows(0)  # at most one row: the cumulative state before the open bars
        self._obi_carry = zero_rows(0)
        self._dirty = False
        self._first_bar: int | None = None  # the first bar that held a tick (gaps are filled after it)
        self._context: int | None = None  # where the first seed's trades were read from
        self._obi_from: int | None = None  # where the first seed's OBI events were counted from
        self._last_update = 0  # the last depth book update applied

    @property
    def _obi_from_book(self) -> bool:
        return self.book is not None and not (self.quotes_until_depth and self.book.events == 0)

    @property
    def tick_types(self) -> tuple[TickType, ...]:
        """The streams this builder reads."""
        types = (TickType.BID_ASK, self.trade_type)
        return (*types, TickType.DEPTH) if self.book is not None else types

    @property
    def open_since(self) -> int | None:
        """The start of the oldest bar that may still change (None before any input)."""
        return self._open.since if self._open is not None else None

    # ---- seeding ---------------------------------------------------------------------------------------
    def context_start(self, until_ns: int) -> int:
        """Where `seed` wants its trades from: the start of the session in progress at `until_ns` (at most
        MAX_CONTEXT_NS back) — or, once seeded, where the first seed's were from (a re-seed continues the same
        classification, as one batch request over the whole stream would); its quotes from QUOTE_LOOKBACK_NS
        before that."""
        if self._context is not None:
            return self._context
        return max(self.session_of(until_ns), until_ns - MAX_CONTEXT_NS)

    @property
    def first_seed(self) -> int | None:
        """Where the first seed started (the batch request every later bar equals starts there)."""
        return None if self._obi_from is None else self._obi_from + QUOTE_LOOKBACK_NS

    def seed(
        self, trades: pa.Table, quotes: pa.Table, book: OrderBook | None, until_ns: int, depth_obi: float | None = None
    ) -> None:
        """Start at `until_ns` (a bar start) from the state the batch service computes for a range starting there
        — or, on a re-seed, for a range starting at `first_seed`: `trades` (ts, price, size, side) from
        `context_start(until_ns)`, `quotes` (ts, bid/ask price and size) from QUOTE_LOOKBACK_NS before that,
        `book` the depth book in force just before `until_ns` (`book_at`), and on a re-seed `depth_obi`, the last
        depth OBI with a value since `first_seed` (a book without volume has none, so the value in force may
        be older than the book). Any earlier state is replaced; the window of bars is cleared."""
        context = self._context = self.context_start(until_ns)
        self.quotes_from = context - QUOTE_LOOKBACK_NS
        if self._obi_from is None:  # OBI events count from the first seed's look-back on (as a batch request from it)
            self._obi_from = until_ns - QUOTE_LOOKBACK_NS
        rolled = hour_rows(trades, quotes, self._obi_from, QUOTE_LOOKBACK_NS, context, sensitivity=False)
        self._carry = Carry().after(rolled.summary, self.quotes_from)
        self._trade_carry = _last_traded(rolled.rows, self.session_of, zero_rows(0))
        if self.book is not None:
            self.book = book.copy() if book is not None else OrderBook()
        obi = zero_rows(0)
        if self._obi_from_book and self.book is not None:
            bid, ask = self.book.top_volumes(self.depth_levels)
            value = float(imbalance(np.array([bid]), np.array([ask]))[0]) if depth_obi is None else depth_obi
            if not math.isnan(value):
                obi = _obi_row(until_ns - NS_PER_SECOND, value)
        else:
            obi = _last_obi(rolled.rows, obi)
        self._obi_carry = obi
        self._open = _Open(until_ns, until_ns, self._carry)
        self._last_update = 0
        self.watermark = max(self.watermark, until_ns)
        self.bars.clear()
        self.late_since = None

    # ---- input -----------------------------------------------------------------------------------------
    def update(
        self,
        items: Iterable[tuple[StreamKey, dict[str, Any]]],
        *,
        now_ns: int | None = None,
        max_ahead_ns: int | None = None,
    ) -> list[dict[str, Any]]:
        """Apply (stream, record) items (put in ts order first, stably) and return the bar upserts. With `now_ns`
        (the wall clock) the watermark does not pass it, and with `max_ahead_ns` too a tick more than that ahead
        of `now_ns` is ignored (counted in `ahead_ticks`)."""
        horizon = None if now_ns is None or max_ahead_ns is None else now_ns + max_ahead_ns
        for stream, record in sorted(items, key=lambda item: item[1]["ts"]):
            if horizon is not None and record["ts"] > horizon:
                self.ahead_ticks += 1
                continue
            self.apply(stream.tick_type, record, now_ns)
        return self.drain()

    def apply(self, tick_type: TickType, record: dict[str, Any], now_ns: int | None = None) -> None:
        """Apply one record; its upserts are collected until `drain`. The watermark moves to its ts, at most to
        `now_ns` when given."""
        ts = int(record["ts"])
        if self._open is None:
            self._open = _Open(ts - ts % self.bar_ns, ts - ts % self.bar_ns)
        if ts < self._open.since:
            self.late_ticks += 1
            self.late_since = ts if self.late_since is None else min(self.late_since, ts)
            return
        if ts < self._open.settled and tick_type != TickType.DEPTH:
            self._open.unsettle()
            self._carry = self._open.carry
        opened = self._open.ticks
        if tick_type == self.trade_type:
            side = record.get("side")
            opened.trades.append((ts, float(record["price"]), float(record["size"]), side if side in (1, -1) else 0))
        elif tick_type == TickType.BID_ASK:
            quote = (ts, float(record["bid_price"]), float(record["bid_size"]), float(record["ask_price"]))
            opened.quotes.append((*quote, float(record["ask_size"])))
            if not self._obi_from_book:
                opened.obi.append((ts, float(record["bid_size"]), float(record["ask_size"])))
        elif tick_type == TickType.DEPTH and self.book is not None:
            if ts < self._last_update:  # the book is applied in order: an older update is late
                self.late_ticks += 1
                self.late_since = ts if self.late_since is None else min(self.late_since, ts)
                return
            self.book.apply(record)
            event = (ts, *self.book.top_volumes(self.depth_levels))
            if opened.obi and opened.obi[-1][0] == ts:  # the same update: the value after its last tick
                opened.obi[-1] = event
            else:
                opened.obi.append(event)
            self._last_update = ts
        else:
            return
        self.watermark = max(self.watermark, ts if now_ns is None else min(ts, now_ns))
        self._dirty = True

    # ---- output ----------------------------------------------------------------------------------------
    def drain(self) -> list[dict[str, Any]]:
        """The upserts since the last drain, oldest first: bars that became final (once each) and the open bars."""
        if not self._dirty or self._open is None:
            return []
        self._dirty = False
        settled = self.watermark - self.lateness_ns
        if settled - settled % NS_PER_SECOND > self._open.settled:  # whole seconds no tick may change any more
            self._settle(settled - settled % NS_PER_SECOND)
        final_until = settled - settled % self.bar_ns  # the bars ending at or before it are final
        out = self._freeze(final_until) if final_until > self._open.since else []
        forming_end = self.watermark - self.watermark % self.bar_ns + self.bar_ns
        return out + self._rows(self._starts(self._open.since, forming_end, forming=True), final=False)

    def flush(self) -> list[dict[str, Any]]:
        """Make every bar up to the watermark's final (the end of the input) and return their rows."""
        if self._open is None:
            return []
        end = self.watermark - self.watermark % self.bar_ns + self.bar_ns
        if end <= self._open.since:
            return []
        self._settle(end)
        return self._freeze(end)

    def snapshot(self) -> list[dict[str, Any]]:
        """Every bar in the window, oldest first (the forming one last, not final)."""
        return [bar.row for bar in self.bars]

    # ---- internals -------------------------------------------------------------------------------------
    def _settle(self, until: int) -> None:
        """Fold the ticks before `until` into rows (classified after the carry, which moves past them)."""
        assert self._open is not None
        opened = self._open
        head = opened.ticks.split(until)
        trades, obi = self._tick_rows(head, opened.settled)
        self._carry = self._carry.after(trades.summary, self.quotes_from)
        for name in ("trades", "quotes", "obi"):
            getattr(opened.settled_ticks, name).extend(getattr(head, name))
        opened.rows = concat_rows([opened.rows, trades.rows])
        opened.obi_rows = concat_rows([opened.obi_rows, obi])
        opened.settled = until

    def _freeze(self, until: int) -> list[dict[str, Any]]:
        """Make the bars before `until` (all settled) final, send them once, then fold their rows into the carry."""
        assert self._open is not None
        opened = self._open
        rows = self._rows(self._starts(opened.since, until), final=True)
        cut = int(np.searchsorted(opened.rows["second"], until))
        self._trade_carry = _last_traded(
            concat_rows([self._trade_carry, _head(opened.rows, cut)]), self.session_of, self._trade_carry
        )
        opened.rows = _tail(opened.rows, cut)
        cut = int(np.searchsorted(opened.obi_rows["second"], until))
        self._obi_carry = _last_obi(_head(opened.obi_rows, cut), self._obi_carry)
        opened.obi_rows = _tail(opened.obi_rows, cut)
        final = opened.settled_ticks.split(until)  # the classification's state at `until`: after the final ticks
        opened.carry = opened.carry.after(
            self._tick_rows(final, opened.since, opened.carry)[0].summary, self.quotes_from
        )
        opened.since = until
        return rows

    def _starts(self, since: int, until: int, forming: bool = False) -> np.ndarray:
        """The bars of [since, until) to send: each bar holding ticks and, filling gaps, the bars after the first
        one that held a tick — at most the last `window` - 1 before `until` (a long gap is not filled further
        back) — and, `forming`, the last bar."""
        assert self._open is not None
        size = self.bar_ns
        opened = self._open
        held = {ts - ts % size for name in ("trades", "quotes", "obi") for ts, *_ in getattr(opened.ticks, name)}
        for rows in (opened.rows, opened.obi_rows):
            held.update((rows["second"] - rows["second"] % size).tolist())
        if held and self._first_bar is None:
            self._first_bar = min(held)
        starts = {s for s in held if since <= s < until}
        if self._first_bar is not None:
            if self.fill_gaps:
                first = max(since, self._first_bar, until - (self.window - 1) * size)
                starts.update(range(first, until, size))
            if forming:
                starts.add(until - size)
        return np.array(sorted(s for s in starts if s >= since), dtype=np.int64)

    def _tick_rows(self, opened: _Ticks, start: int, carry: Carry | None = None) -> tuple[HourRows, Rows]:
        """(trade rows with their summary, OBI rows) of some open ticks from `start` on, classified after `carry`
        (default: the current one)."""
        trades = sorted(opened.trades, key=lambda t: t[0])
        quotes = sorted(opened.quotes, key=lambda q: q[0])
        trade_table = pa.table(
            {
                "ts": pa.array([t[0] for t in trades], pa.int64()).cast(_TS),
                "price": [t[1] for t in trades],
                "size": [t[2] for t in trades],
                "side": pa.array([t[3] for t in trades], pa.int8()),
            },
            schema=_TRADES_SCHEMA,
        )
        quote_table = pa.table(
            {
                "ts": pa.array([q[0] for q in quotes], pa.int64()).cast(_TS),
                "bid_price": [q[1] for q in quotes],
                "bid_size": [q[2] for q in quotes],
                "ask_price": [q[3] for q in quotes],
                "ask_size": [q[4] for q in quotes],
            },
            schema=_QUOTES_SCHEMA,
        )
        carry = self._carry if carry is None else carry
        rolled = hour_rows(
            trade_table, quote_table, start, QUOTE_LOOKBACK_NS, carry=carry, quote_obi=False, sensitivity=False
        )
        events = sorted(opened.obi, key=lambda e: e[0])
        volumes = pa.table(
            {
                "ts": pa.array([e[0] for e in events], pa.int64()).cast(_TS),
                "bid_volume": [e[1] for e in events],
                "ask_volume": [e[2] for e in events],
            },
            schema=VOLUMES_SCHEMA,
        )
        return rolled, obi_rows(volumes)

    def _rows(self, starts: np.ndarray, *, final: bool) -> list[dict[str, Any]]:
        """The rows of the bars starting at `starts` from the open ticks and the carry."""
        if not len(starts):
            return []
        assert self._open is not None
        opened = self._open
        trades, obi = self._tick_rows(opened.ticks, opened.settled)
        rows = concat_rows([self._trade_carry, opened.rows, trades.rows])
        grid = BarGrid.of_starts(starts, self.bar_ns)
        instants = [*rows["second"][:1].tolist(), *grid.starts.tolist(), *(grid.ends - 1).tolist()]
        resets = sorted({self.session_of(int(t)) for t in instants})
        obi_all = concat_rows([self._obi_carry, opened.obi_rows, obi])
        columns, _ = bars_from_rows(grid, rows, ("ohlc", "cvd", "obi"), resets, obi_source_rows=obi_all)
        out = []
        for i, label in enumerate(grid.labels.tolist()):
            row = {"ts": label, "final": final, "revision": False, "session": self.session_of(label + self.bar_ns - 1)}
            row |= {name: _plain(columns[name][i]) for name in BAR_COLUMNS}
            if self._remember(label, row) or final:  # an open bar is sent again only when it changed
                out.append(row)
        return out

    def _remember(self, start: int, row: dict[str, Any]) -> bool:
        """Keep `row` as the bar's latest in the window; whether it differs from the one kept before."""
        for bar in reversed(self.bars):
            if bar.start == start:
                changed = not _same(bar.row, row)
                bar.row = row
                return changed
            if bar.start < start:
                break
        if not self.bars or start > self.bars[-1].start:
            self.bars.append(LiveBar(start, row))
        return True


# ---- carry rows ----------------------------------------------------------------------------------------------


def _last_traded(rows: Rows, session_of: Callable[[int], int], default: Rows) -> Rows:
    """The carry row after `rows` (a carry row first, then rows in time order): the last traded row, holding the
    cumulative notional, volume and delta since the last reset — as the batch cumsums (sequential, restarting at
    each reset) give them at that row — so a cumsum continuing from it equals the batch's."""
    traded = np.flatnonzero(rows["trade_count"] > 0)
    if not len(traded):
        return default
    seconds = rows["second"][traded]
    segment = np.asarray([session_of(int(s)) for s in seconds], dtype=np.int64)
    last_segment = np.flatnonzero(segment == segment[-1])
    out = {name: values[traded[-1] : traded[-1] + 1].copy() for name, values in rows.items()}
    for name in ("notional", "volume", "delta"):
        out[name] = np.cumsum(rows[name][traded[last_segment]])[-1:]
    for name in ("n_recorded", "n_quote", "n_tick", "n_unknown", "buy_volume", "sell_volume", "unknown_volume"):
        out[name] = np.zeros(1, dtype=out[name].dtype)
    return out


def _head(rows: Rows, n: int) -> Rows:
    return {name: values[:n] for name, values in rows.items()}


def _tail(rows: Rows, n: int) -> Rows:
    return {name: values[n:] for name, values in rows.items()}


def _last_obi(rows: Rows, default: Rows) -> Rows:
    """The OBI carry row: the last event with a value in `rows` (else `default`)."""
    found = np.flatnonzero(rows["obi_count"] > 0)
    if not len(found):
        return default
    return _obi_row(int(rows["second"][found[-1]]), float(rows["obi_last"][found[-1]]))


def _obi_row(second: int, value: float) -> Rows:
    row = zero_rows(1)
    row["second"][0] = second
    for name in ("obi_first", "obi_high", "obi_low", "obi_last"):
        row[name][0] = value
    row["obi_count"][0] = 1
    return row


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Rows equal field by field, NaN equal to NaN."""
    return a.keys() == b.keys() and all(
        x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
        for x, y in ((a[k], b[k]) for k in a)
    )


def _plain(value: Any) -> Any:
    """A numpy scalar as a plain Python value (NaN stays NaN)."""
    return value.item() if isinstance(value, np.generic) else value


__all__ = ["LiveBar", "LiveBarBuilder"]
