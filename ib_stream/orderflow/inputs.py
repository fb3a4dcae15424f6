"""Order-flow service: the rows a bar request is built from, read from the store — stored 1-second rollups
where they serve the request, else the ticks (both give the same rows, so the same bars).

* Trade rows: trades from the context start (the session in progress at the range start), classified
  with `bid_ask` quotes from `quote_lookback_ns` before it, and — for OBI from top of book — every
  quote from the range start minus the lookback on.
* Depth rows: the OBI of each book update from the book in force at the range start (the latest
  snapshot plus at most an hour of deltas, `book_at`) on — from the depth rollups or the replay.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa

from ib_stream.analytics.book import top_volumes
from ib_stream.analytics.obi import VOLUMES_SCHEMA, obi_series
from ib_stream.analytics.request import DEFAULT_LEVELS
from ib_stream.analytics.rows import HourRows, Rows, hour_rows, obi_rows_of
from ib_stream.analytics.side import recorded_sides
from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import StreamKey, TickType
from ib_stream.store.depth_rollups import depth_obi_rows
from ib_stream.store.query import QueryEngine
from ib_stream.store.rollups import load_rows
from ib_stream.store.schema import arrow_schema
from ib_stream.store.snapshots import book_at

TRADE_COLUMNS: Final = ["ts", "price", "size", "side"]
QUOTE_COLUMNS: Final = ["ts", "bid_price", "bid_size", "ask_price", "ask_size"]

# (engine, depth stream, start_ns, end_ns, levels) -> (ts, bid_volume, ask_volume) or None without depth.
DepthVolumes = Callable[[QueryEngine, StreamKey, int, int, int], pa.Table | None]


@dataclass(frozen=True, slots=True)
class Classification:
    """How trades get their side: `side.classify`'s options and the quote look-back."""

    quote_lookback_ns: int = 300 * NS_PER_SECOND
    max_quote_age_ns: int | None = None
    quote_inclusive: bool = False
    use_recorded_side: bool = True
    sides: bool = True  # False: the caller reads no side-dependent column (no quotes are read)

    def rollups_apply(self, partition_ns: int) -> bool:
        """Whether the stored rollups (built with the defaults) classify trades this way."""
        return not self.sides or (
            self.use_recorded_side
            and self.max_quote_age_ns is None
            and not self.quote_inclusive
            and not self.quote_lookback_ns % NS_PER_SECOND
            and self.quote_lookback_ns <= partition_ns
        )


def book_top_volumes(
    engine: QueryEngine, stream: StreamKey, start_ns: int, end_ns: int, levels: int
) -> pa.Table | None:
    """Top-`levels` depth volumes: the book in force at start_ns, then after every book update of the range.

    The book at the range start is the latest valid snapshot plus the deltas after it (`book_at`); its
    volumes open the series (stamped start_ns − 1), so the first bar opens at the OBI in force. None when
    the contract has no depth up to end_ns.
    """
    start_book = book_at(engine, stream.contract_id, start_ns - 1).book
    deltas = engine.read_stream(stream, start_ns, end_ns)
    if deltas.num_rows == 0 and len(start_book) == 0:
        return None
    volumes = top_volumes(deltas, levels, start_book=start_book)
    if len(start_book):
        bid, ask = start_book.top_volumes(levels)
        opening = pa.table({"ts": [start_ns - 1], "bid_volume": [bid], "ask_volume": [ask]}, schema=VOLUMES_SCHEMA)
        volumes = pa.concat_tables([opening, volumes])
    return volumes


def trade_rows(
    engine: QueryEngine,
    trades: StreamKey,
    context_ns: int,
    obi_from_ns: int | None,
    end_ns: int,
    edges: np.ndarray,
    how: Classification,
    use_rollups: bool,
) -> HourRows:
    """The trade rows of [context_ns, end_ns) and — unless `obi_from_ns` is None — the top-of-book OBI rows of
    [obi_from_ns, end_ns), from stored rollups when they serve the range (whole seconds, default classification),
    else from the ticks. `sides` of the result is set on the tick path only."""
    on_seconds = not (edges % NS_PER_SECOND).any() and not context_ns % NS_PER_SECOND
    if use_rollups and on_seconds and how.rollups_apply(engine.layout.partition_ns):
        first = context_ns if obi_from_ns is None else min(context_ns, obi_from_ns)
        rows = load_rows(engine, trades, context_ns, first, end_ns, how.quote_lookback_ns)
        if rows is not None:
            return HourRows(rows, False, {})
    table, quotes = read_trades(engine, trades, context_ns, obi_from_ns, end_ns, how)
    return hour_rows(
        table,
        quotes,
        context_ns if obi_from_ns is None else obi_from_ns,
        how.quote_lookback_ns,
        context_ns,
        edges=edges,
        quote_obi=obi_from_ns is not None,
        sensitivity=False,
        obi_per_second=False,
        with_sides=how.sides,
        use_recorded=how.use_recorded_side,
        inclusive=how.quote_inclusive,
        max_quote_age_ns=how.max_quote_age_ns,
    )


def read_trades(
    engine: QueryEngine, trades: StreamKey, context_ns: int, obi_from_ns: int | None, end_ns: int, how: Classification
) -> tuple[pa.Table, pa.Table]:
    """The trades of [context_ns, end_ns) and the quotes their classification needs (from context − lookback;
    from `obi_from_ns` too when the top-of-book OBI is wanted; none when every trade has a recorded side)."""
    table = engine.read_stream(trades, context_ns, end_ns, TRADE_COLUMNS if how.sides else TRADE_COLUMNS[:3])
    quotes_from = context_ns - how.quote_lookback_ns
    recorded = recorded_sides(table) if how.use_recorded_side else None
    needs_quotes = obi_from_ns is not None or (how.sides and (recorded is None or bool((recorded == 0).any())))
    if not needs_quotes or (not table.num_rows and obi_from_ns is None):
        return table, arrow_schema(TickType.BID_ASK).empty_table().select(QUOTE_COLUMNS)
    first = quotes_from if obi_from_ns is None else min(quotes_from, obi_from_ns)
    return table, engine.read_stream(StreamKey(trades.contract_id, TickType.BID_ASK), first, end_ns, QUOTE_COLUMNS)


def classified(table: pa.Table, quotes: pa.Table, context_ns: int, how: Classification) -> HourRows:
    """The rows of trades read by `read_trades` (no OBI), with the side of each (`sides`)."""
    return hour_rows(
        table,
        quotes,
        context_ns,
        how.quote_lookback_ns,
        context_ns,
        quote_obi=False,
        sensitivity=False,
        use_recorded=how.use_recorded_side,
        inclusive=how.quote_inclusive,
        max_quote_age_ns=how.max_quote_age_ns,
    )


def depth_obi(
    engine: QueryEngine,
    contract_id: int,
    start_ns: int,
    end_ns: int,
    levels: int,
    edges: np.ndarray,
    volumes_of: DepthVolumes,
    use_rollups: bool,
) -> Rows | None:
    """The OBI rows of the depth book over [start_ns, end_ns), opened by the book in force at start_ns (a row
    before it); from the depth rollups when they serve the range, else from `volumes_of` (the book replay).
    None when the contract has no depth up to end_ns."""
    on_seconds = not (edges % NS_PER_SECOND).any()
    if use_rollups and on_seconds and volumes_of is book_top_volumes and levels == DEFAULT_LEVELS:
        found = depth_obi_rows(engine, contract_id, start_ns, end_ns, levels)
        if found is not None:
            rows, in_force = found
            if not np.isnan(in_force):  # the book in force at the start opens the first bar, as in the replay
                rows = _with_opening(rows, start_ns - NS_PER_SECOND, in_force)
            return rows
    volumes = volumes_of(engine, StreamKey(contract_id, TickType.DEPTH), start_ns, end_ns, levels)
    if volumes is None or not volumes.num_rows:
        return None
    return obi_rows_of(*obi_series(volumes), edges, per_second=False)


def _with_opening(rows: Rows, second: int, value: float) -> Rows:
    """Depth OBI rows with a leading row at `second` holding one event of `value` (the OBI in force)."""
    lead = {"second": second, "obi_first": value, "obi_high": value, "obi_low": value, "obi_last": value}
    lead |= {"obi_end": value, "obi_count": 1, "events": 1}
    return {name: np.concatenate(([lead[name]], values)).astype(values.dtype) for name, values in rows.items()}
