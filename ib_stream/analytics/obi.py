"""Analytics: order-book imbalance (OBI) of a series of (ts, bid_volume, ask_volume); its bars are built by
`engine.bars_from_rows`.

OBI = (bid_volume − ask_volume) / (bid_volume + ask_volume), in [−1, 1]: +1 when only bids rest,
−1 when only asks do. The input is either top-of-book sizes (`top_of_book_volumes` of a `bid_ask`
table) or the summed size of the top N depth levels per side (`ib_stream.analytics.book.top_volumes`);
the formula is the same. An event with both volumes 0 has no imbalance and is skipped.

OBI is a state, not a flow: it holds from one event to the next (see `engine` for its bars).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pyarrow as pa

from ib_stream.analytics.side import floats, ts_ns

VOLUMES_SCHEMA: Final = pa.schema(
    [("ts", pa.timestamp("ns", tz="UTC")), ("bid_volume", pa.float64()), ("ask_volume", pa.float64())]
)


def imbalance(bid_volume: np.ndarray, ask_volume: np.ndarray) -> np.ndarray:
    """(bid − ask) / (bid + ask) per event; NaN where both are 0."""
    bid = np.asarray(bid_volume, dtype=np.float64)
    ask = np.asarray(ask_volume, dtype=np.float64)
    total = bid + ask
    has_volume = total > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.subtract(bid, ask)  # divided in place: one temporary less on millions of quotes
        np.divide(out, total, out=out)
    if not has_volume.all():
        out[~has_volume] = np.nan
    return out


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
