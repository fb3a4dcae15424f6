"""Order-flow service: the bars of `/v2/historical?resolution=` (and `StorageQuery.query_range(resolution=)`)
for every tick type, from the one bar engine — the same numbers as `/v2/bars` under the same names.

* `last` / `all_last`: the OHLC columns of the order-flow bars (open, high, low, close, volume, vwap,
  trade_count, empty) — the close carried from the last trade of the session before the range.
* `bid_ask`: the quote in force at the bar's end (bid_price, ask_price, bid_size, ask_size), the
  top-of-book OBI columns (obi_open … obi_count, as `/v2/bars` with obi_source=quotes), quote_count and
  empty (no quote in the bar).
* `mid_point`: open, high, low, close of the midpoints (close carried), tick_count and empty.

Quotes and midpoints are read from `quote_lookback_ns` before the range, for the values in force at its
start. `1d` is one bar per trading session of the contract's calendar; `24h` a UTC day.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa

from ib_stream.analytics.engine import bars_from_rows, last_values, trade_bars
from ib_stream.analytics.obi import imbalance
from ib_stream.analytics.request import BarsRequest
from ib_stream.analytics.rows import obi_rows_of
from ib_stream.analytics.side import floats, ts_ns
from ib_stream.domain import StreamKey, TickType
from ib_stream.errors import QueryError
from ib_stream.orderflow.inputs import QUOTE_COLUMNS
from ib_stream.orderflow.service import OrderFlow

TRADE_BAR_COLUMNS: Final = ("open", "high", "low", "close", "volume", "vwap", "trade_count", "empty")
QUOTE_BAR_COLUMNS: Final = (
    "bid_price",
    "ask_price",
    "bid_size",
    "ask_size",
    "obi_open",
    "obi_high",
    "obi_low",
    "obi_close",
    "obi_count",
    "quote_count",
    "empty",
)
MID_BAR_COLUMNS: Final = ("open", "high", "low", "close", "tick_count", "empty")
BARS_OF: Final = {
    TickType.LAST: TRADE_BAR_COLUMNS,
    TickType.ALL_LAST: TRADE_BAR_COLUMNS,
    TickType.BID_ASK: QUOTE_BAR_COLUMNS,
    TickType.MID_POINT: MID_BAR_COLUMNS,
}


def check_bars_of(tick_type: TickType, resolution: str) -> None:
    """Refuse bars of a tick type that has none (depth), naming the field."""
    if tick_type not in BARS_OF:
        raise QueryError(
            f"resolution {resolution} is not available for tick type {tick_type.value} (use resolution=tick)",
            details={"field": "resolution", "value": resolution, "tick_type": tick_type.value},
        )


def historical_bars(
    flow: OrderFlow, tick_type: TickType, start_ns: int, end_ns: int, resolution: str, session: str = "regular"
) -> pd.DataFrame:
    """The bars of one stream over [start_ns, end_ns): a DataFrame with a tz-aware UTC `timestamp` column first."""
    check_bars_of(tick_type, resolution)
    contract_id = flow.contract.con_id
    if tick_type in (TickType.LAST, TickType.ALL_LAST):
        # These columns do not depend on trade sides: the bars are made without reading quotes to classify.
        unsided = OrderFlow(
            flow.engine, flow.contract, sessions=flow.sessions, use_rollups=flow.use_rollups, sides=False
        )
        request = BarsRequest(contract_id, start_ns, end_ns, resolution, ("ohlc",), session, trades=tick_type)
        table = unsided.bars(request).table
        return table.select(["timestamp", *TRADE_BAR_COLUMNS]).to_pandas()
    grid = flow.grid_of(start_ns, end_ns, resolution, session)
    lookback = flow.quote_lookback_ns
    columns_read = QUOTE_COLUMNS if tick_type == TickType.BID_ASK else ["ts", "mid_point"]
    ticks = flow.engine.read_stream(StreamKey(contract_id, tick_type), start_ns - lookback, end_ns, columns_read)
    ts = ts_ns(ticks)
    lo, hi = grid.locate(ts)
    columns: dict[str, np.ndarray] = {}
    if tick_type == TickType.BID_ASK:
        columns.update(last_values(grid, ts, ticks, ("bid_price", "ask_price", "bid_size", "ask_size")))
        values = imbalance(floats(ticks, "bid_size"), floats(ticks, "ask_size"))
        known = ~np.isnan(values)
        if not known.all():  # quotes with no size on either side have no imbalance
            ts, values = ts[known], values[known]
        rows = obi_rows_of(ts, values, grid.edges(), per_second=False)
        columns.update(bars_from_rows(grid, rows, ("obi",), obi_from_ns=start_ns - lookback)[0])
        columns["quote_count"] = (hi - lo).astype(np.int64)
        columns["empty"] = hi == lo
    else:
        ohlc = trade_bars(grid, ts, floats(ticks, "mid_point"), np.zeros(len(ts)), np.zeros(len(ts), np.int8))
        columns = {name: ohlc[name] for name in ("open", "high", "low", "close", "empty")}
        columns["tick_count"] = ohlc["trade_count"]
    labels = pa.array(grid.labels, pa.int64()).cast(pa.timestamp("ns", tz="UTC"))
    table = pa.table({"timestamp": labels, **{name: columns[name] for name in BARS_OF[tick_type]}})
    return table.to_pandas()
