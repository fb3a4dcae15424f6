"""Trade side classification: who aggressed each trade (recorded side, else quote rule, else tick rule).

Every trade gets a side (+1 buyer-initiated, −1 seller-initiated, 0 unknown) and the method that
decided it, in this order of preference:

1. ``recorded`` — the source recorded the aggressor (the ``side`` column of ``last`` / ``all_last``
   is +1 or −1; IB does not send it, importers of exchange data do).
2. ``quote`` — the quote rule against the prevailing quote, found by an as-of join of the trade time
   with the ``bid_ask`` stream: price ≥ ask → buy, price ≤ bid → sell. The prevailing quote is the
   last one stamped strictly *before* the trade (a quote with the trade's own timestamp may already
   show the book after the trade ate a level); ``inclusive=True`` also accepts same-timestamp quotes.
   A quote is usable only when 0 < bid < ask: a **locked** (bid = ask) or **crossed** (bid > ask)
   quote does not define a spread — a price can be both ≥ ask and ≤ bid — so such trades, trades
   inside the spread, and trades with no (or a too old) quote fall through to the tick rule.
3. ``tick`` — the tick rule: a trade above the last *different* trade price is a buy (uptick), below
   it a sell (downtick); a zero tick keeps the direction of the last price change (the classic
   zero-uptick / zero-downtick test).
4. ``unknown`` — none of the above decided (e.g. the first trades of the input, before any price change).

Everything is vectorised: one searchsorted for the join, one forward fill for the tick rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

BUY: Final = 1
SELL: Final = -1
# Method codes, as stored in `TradeSides.method`.
UNKNOWN: Final = 0
RECORDED: Final = 1
QUOTE: Final = 2
TICK: Final = 3
METHOD_NAMES: Final[tuple[str, ...]] = ("unknown", "recorded", "quote", "tick")


@dataclass(frozen=True, slots=True)
class TradeSides:
    """The side of each trade (int8 +1/−1/0) and the method that decided it (int8 code of METHOD_NAMES)."""

    side: np.ndarray
    method: np.ndarray

    def method_names(self) -> np.ndarray:
        """The method of each trade as a string array (recorded|quote|tick|unknown)."""
        return np.asarray(METHOD_NAMES, dtype=object)[self.method]

    def counts(self) -> dict[str, int]:
        """How many trades each method decided."""
        found = np.bincount(self.method.astype(np.intp), minlength=len(METHOD_NAMES))
        return {name: int(n) for name, n in zip(METHOD_NAMES, found, strict=True)}


def tick_rule(price: np.ndarray, prior_direction: int = 0) -> np.ndarray:
    """Return the tick-rule side of each trade: +1 uptick, −1 downtick, zero tick = last price change.

    `prior_direction` is the direction in force before the first trade (0 = unknown).
    """
    price = np.asarray(price, dtype=np.float64)
    n = len(price)
    direction = np.zeros(n, dtype=np.int8)
    if n == 0:
        return direction
    direction[0] = np.int8(np.sign(prior_direction))
    if n > 1:
        direction[1:] = np.sign(np.diff(price)).astype(np.int8)
    # Forward-fill zero ticks with the last non-zero direction.
    moved = direction != 0
    last = np.where(moved, np.arange(n), -1)
    np.maximum.accumulate(last, out=last)
    filled = np.zeros(n, dtype=np.int8)
    known = last >= 0
    filled[known] = direction[last[known]]
    return filled


def prevailing_quotes(
    trade_ts: np.ndarray,
    quote_ts: np.ndarray,
    bid: np.ndarray,
    ask: np.ndarray,
    *,
    inclusive: bool = False,
    max_age_ns: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """As-of join: the bid and ask in force at each trade (NaN where there is none).

    `quote_ts` must be sorted. The quote in force is the last one with ts < trade ts (≤ with
    `inclusive`); with `max_age_ns`, a quote older than that is treated as missing.
    """
    trade_ts = np.asarray(trade_ts, dtype=np.int64)
    quote_ts = np.asarray(quote_ts, dtype=np.int64)
    index = np.searchsorted(quote_ts, trade_ts, side="right" if inclusive else "left") - 1
    found = index >= 0
    if max_age_ns is not None:
        found &= trade_ts - quote_ts[np.maximum(index, 0)] <= max_age_ns
    bid_at = np.full(len(trade_ts), np.nan)
    ask_at = np.full(len(trade_ts), np.nan)
    bid_at[found] = np.asarray(bid, dtype=np.float64)[index[found]]
    ask_at[found] = np.asarray(ask, dtype=np.float64)[index[found]]
    return bid_at, ask_at


def quote_rule(price: np.ndarray, bid: np.ndarray, ask: np.ndarray) -> np.ndarray:
    """Return +1 where price ≥ ask, −1 where price ≤ bid, 0 inside the spread or without a usable quote.

    A quote is usable only when 0 < bid < ask (locked and crossed quotes, missing sides and NaN give 0).
    """
    price = np.asarray(price, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        usable = (bid > 0) & (ask > 0) & (bid < ask)
        side = np.where(price >= ask, BUY, np.where(price <= bid, SELL, 0)).astype(np.int8)
    side[~usable] = 0
    return side


def classify(
    trade_ts: np.ndarray,
    price: np.ndarray,
    recorded: np.ndarray | None = None,
    quotes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    *,
    use_recorded: bool = True,
    inclusive: bool = False,
    max_quote_age_ns: int | None = None,
    prior_direction: int = 0,
) -> TradeSides:
    """Classify trades sorted by time; `recorded` holds +1/−1/0 (0 = not recorded), `quotes` is (ts, bid, ask)."""
    n = len(price)
    side = np.zeros(n, dtype=np.int8)
    method = np.zeros(n, dtype=np.int8)
    if n == 0:
        return TradeSides(side, method)
    undecided = np.ones(n, dtype=bool)
    if use_recorded and recorded is not None:
        given = np.asarray(recorded, dtype=np.int8)
        has = (given == BUY) | (given == SELL)
        side[has] = given[has]
        method[has] = RECORDED
        undecided &= ~has
    if quotes is not None and undecided.any():
        bid_at, ask_at = prevailing_quotes(
            trade_ts, quotes[0], quotes[1], quotes[2], inclusive=inclusive, max_age_ns=max_quote_age_ns
        )
        by_quote = quote_rule(price, bid_at, ask_at)
        take = undecided & (by_quote != 0)
        side[take] = by_quote[take]
        method[take] = QUOTE
        undecided &= ~take
    if undecided.any():
        by_tick = tick_rule(price, prior_direction)
        take = undecided & (by_tick != 0)
        side[take] = by_tick[take]
        method[take] = TICK
    return TradeSides(side, method)


def recorded_sides(trades: pa.Table) -> np.ndarray | None:
    """The `side` column of a trade table as int8 (null → 0), or None when the table has no such column."""
    if "side" not in trades.column_names:
        return None
    column = pc.fill_null(trades.column("side").cast(pa.int8()), 0)
    return np.asarray(column.to_numpy(), dtype=np.int8)


def classify_table(
    trades: pa.Table,
    quotes: pa.Table | None = None,
    *,
    use_recorded: bool = True,
    inclusive: bool = False,
    max_quote_age_ns: int | None = None,
) -> TradeSides:
    """Classify a trade table (ts, price[, side]) against a `bid_ask` table (ts, bid_price, ask_price)."""
    quote_arrays = None
    if quotes is not None and quotes.num_rows:
        quote_arrays = (
            ts_ns(quotes),
            quotes.column("bid_price").to_numpy(),
            quotes.column("ask_price").to_numpy(),
        )
    return classify(
        ts_ns(trades),
        trades.column("price").to_numpy(),
        recorded_sides(trades),
        quote_arrays,
        use_recorded=use_recorded,
        inclusive=inclusive,
        max_quote_age_ns=max_quote_age_ns,
    )


def ts_ns(table: pa.Table, name: str = "ts") -> np.ndarray:
    """A timestamp (or int64) column as int64 ns."""
    if table.num_rows == 0:
        return np.zeros(0, dtype=np.int64)
    column = table.column(name)
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.int64())
    return np.asarray(_to_numpy(column), dtype=np.int64)


def floats(table: pa.Table, name: str) -> np.ndarray:
    """A numeric column as float64."""
    if table.num_rows == 0:
        return np.zeros(0, dtype=np.float64)
    return np.asarray(_to_numpy(table.column(name)), dtype=np.float64)


def floats_at(table: pa.Table, name: str, index: np.ndarray) -> np.ndarray:
    """`floats(table, name)[index]`, converting only the chunks' elements at `index` (not the whole column)."""
    column = table.column(name)
    kind = column.type
    if column.null_count or not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        return floats(table, name)[index]
    index = np.asarray(index, dtype=np.int64)
    ends = np.cumsum([len(chunk) for chunk in column.chunks], dtype=np.int64)
    chunk_of = np.searchsorted(ends, index, side="right")
    out = np.empty(len(index), dtype=np.float64)
    for k in np.unique(chunk_of):
        mine = chunk_of == k
        start = ends[k] - len(column.chunk(k))
        out[mine] = column.chunk(k).to_numpy()[index[mine] - start]
    return out


def _to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    # A query's columns come in one chunk per file read: ChunkedArray.to_numpy joins them through its
    # pandas conversion, 2-3x slower than joining them in Arrow (its memory pool reuses the pages) and
    # viewing the one chunk without a copy. The view is read-only, as a one-chunk column's always was.
    kind = column.type
    if column.num_chunks > 1 and not column.null_count and (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        return column.combine_chunks().to_numpy()
    return column.to_numpy()
