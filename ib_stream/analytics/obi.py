"""Order-book imbalance (OBI) bars from a series of (ts, bid_volume, ask_volume).

OBI = (bid_volume − ask_volume) / (bid_volume + ask_volume), in [−1, 1]: +1 when only bids rest,
−1 when only asks do. The input is either top-of-book sizes (`top_of_book_volumes` of a `bid_ask`
table) or the summed size of the top N depth levels per side (`ib_stream.analytics.book.top_volumes`);
the formula is the same. An event with both volumes 0 has no imbalance and is skipped.

OBI is a state, not a flow: it holds from one event to the next. Per bar, obi_open is the value in
force at the bar's start (carried from the last event before it; the bar's first event when
nothing came before), obi_high / obi_low the extremes over that value and the bar's events,
obi_close the value in force at the bar's end, and obi_count the number of events in the bar. A
bar without events is flat at the carried value (NaN before the first event).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pyarrow as pa

from ib_stream.analytics.orderflow import BarGrid, segment_reduce
from ib_stream.analytics.side import floats, ts_ns

OBI_COLUMNS: Final = ("obi_open", "obi_high", "obi_low", "obi_close", "obi_count")
VOLUMES_SCHEMA: Final = pa.schema(
    [("ts", pa.timestamp("ns", tz="UTC")), ("bid_volume", pa.float64()), ("ask_volume", pa.float64())]
)


def imbalance(bid_volume: np.ndarray, ask_volume: np.ndarray) -> np.ndarray:
    """(bid − ask) / (bid + ask) per event; NaN where both are 0."""
    bid = np.asarray(bid_volume, dtype=np.float64)
    ask = np.asarray(ask_volume, dtype=np.float64)
    total = bid + ask
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (bid - ask) / total, np.nan)


def top_of_book_volumes(bid_ask: pa.Table) -> pa.Table:
    """The (ts, bid_volume, ask_volume) series of a `bid_ask` table: the best bid and ask sizes."""
    return pa.table(
        {
            "ts": pa.array(ts_ns(bid_ask), pa.int64()).cast(VOLUMES_SCHEMA.field("ts").type),
            "bid_volume": pa.array(floats(bid_ask, "bid_size")),
            "ask_volume": pa.array(floats(bid_ask, "ask_size")),
        },
        schema=VOLUMES_SCHEMA,
    )


def obi_series(volumes: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(ts, obi) of a volumes table sorted by ts, events without any volume removed."""
    ts = ts_ns(volumes)
    values = imbalance(floats(volumes, "bid_volume"), floats(volumes, "ask_volume"))
    keep = ~np.isnan(values)
    return ts[keep], values[keep]


def obi_bars(grid: BarGrid, volumes: pa.Table) -> dict[str, np.ndarray]:
    """OHLC of the imbalance per bar (see the module docstring) plus the event count."""
    ts, values = obi_series(volumes)
    lo, hi = grid.locate(ts)
    count = hi - lo
    opens = np.full(len(grid), np.nan)
    carried_in = lo > 0
    opens[carried_in] = values[lo[carried_in] - 1]
    first_only = ~carried_in & (count > 0)
    opens[first_only] = values[lo[first_only]]
    closes = np.full(len(grid), np.nan)
    known = hi > 0
    closes[known] = values[hi[known] - 1]
    highs = np.fmax(segment_reduce(np.maximum, values, lo, hi, np.nan), opens)
    lows = np.fmin(segment_reduce(np.minimum, values, lo, hi, np.nan), opens)
    return {"obi_open": opens, "obi_high": highs, "obi_low": lows, "obi_close": closes, "obi_count": count}


def time_weighted_obi(volumes: pa.Table, start_ns: int, end_ns: int) -> float:
    """Mean imbalance over [start_ns, end_ns), each value weighted by how long it was in force (NaN if none)."""
    ts, values = obi_series(volumes)
    lo, hi = np.searchsorted(ts, [start_ns, end_ns], side="left")
    first = lo - 1 if lo > 0 else lo
    if first >= hi:
        return float("nan")
    held_from = np.maximum(ts[first:hi], start_ns)
    held_to = np.append(held_from[1:], end_ns)
    weights = (held_to - held_from).astype(np.float64)
    total = weights.sum()
    if total <= 0:
        return float("nan")
    return float((values[first:hi] * weights).sum() / total)
