"""Time bars from sorted tick columns (numpy searchsorted + reduceat, no per-tick Python loops).

Bars are aligned to multiples of the bar size since the epoch in UTC (`1d` = UTC days). Every
interval of the asked range comes back as a row; an interval without ticks has `empty=True`,
carries the previous close (or last quote) forward and has zero volume / count.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa

from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import TickType
from ib_stream.errors import QueryError, ValidationError

BAR_SIZES: Final[dict[str, int]] = {
    "1s": NS_PER_SECOND,
    "5s": 5 * NS_PER_SECOND,
    "15s": 15 * NS_PER_SECOND,
    "30s": 30 * NS_PER_SECOND,
    "1m": 60 * NS_PER_SECOND,
    "5m": 300 * NS_PER_SECOND,
    "15m": 900 * NS_PER_SECOND,
    "30m": 1800 * NS_PER_SECOND,
    "1h": 3600 * NS_PER_SECOND,
    "1d": 86_400 * NS_PER_SECOND,
}
MAX_BARS: Final = 2_000_000
RESOLUTIONS: Final = ("tick", *BAR_SIZES)

# Columns each tick type needs to build bars.
BAR_INPUTS: Final[dict[TickType, tuple[str, ...]]] = {
    TickType.LAST: ("ts", "price", "size"),
    TickType.ALL_LAST: ("ts", "price", "size"),
    TickType.BID_ASK: ("ts", "bid_price", "bid_size", "ask_price", "ask_size"),
    TickType.MID_POINT: ("ts", "mid_point"),
}


def parse_resolution(value: str | None) -> str:
    """Return a valid resolution name (`tick` when None) or raise naming the value."""
    if value is None:
        return "tick"
    if value not in RESOLUTIONS:
        raise ValidationError("resolution", value, f"is not one of {', '.join(RESOLUTIONS)}")
    return value


def bar_edges(start_ns: int, end_ns: int, resolution: str) -> np.ndarray:
    """Bar start times covering [start_ns, end_ns)."""
    size = BAR_SIZES[resolution]
    first = start_ns - start_ns % size
    count = -(-(end_ns - first) // size)
    if count > MAX_BARS:
        raise QueryError(
            f"{count} bars of {resolution} is too many for one query (max {MAX_BARS}); use a larger resolution",
            details={"field": "resolution", "value": resolution, "bars": count},
        )
    return first + np.arange(count, dtype=np.int64) * size


def make_bars(table: pa.Table, tick_type: TickType, start_ns: int, end_ns: int, resolution: str) -> pd.DataFrame:
    """Aggregate ticks sorted by ts (within [start_ns, end_ns)) into bars of `resolution`."""
    if tick_type not in BAR_INPUTS:
        raise QueryError(
            f"resolution {resolution} is not available for tick type {tick_type.value} (use resolution=tick)",
            details={"field": "resolution", "value": resolution, "tick_type": tick_type.value},
        )
    edges = bar_edges(start_ns, end_ns, resolution)
    ts = table.column("ts").to_numpy().view(np.int64) if table.num_rows else np.zeros(0, np.int64)
    bounds = np.searchsorted(ts, edges, side="left")
    counts = np.diff(np.append(bounds, len(ts)))
    filled = counts > 0
    starts = bounds[filled]
    ends = starts + counts[filled] - 1
    out: dict[str, np.ndarray] = {"timestamp": edges}

    def col(name: str) -> np.ndarray:
        return table.column(name).to_numpy().astype(np.float64, copy=False)

    if tick_type in (TickType.LAST, TickType.ALL_LAST):
        price, size = col("price"), col("size")
        _ohlc(out, price, starts, ends, filled, "")
        volume = _sum(size, starts, filled)
        notional = _sum(price * size, starts, filled)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["volume"] = volume
            out["vwap"] = np.where(volume > 0, notional / volume, np.nan)
        out["trade_count"] = counts
    elif tick_type == TickType.BID_ASK:
        bid_size, ask_size = col("bid_size"), col("ask_size")
        for name in ("bid_price", "ask_price"):
            out[name] = carry_forward(_last(col(name), ends, filled))
        out["bid_size"] = carry_forward(_last(bid_size, ends, filled))
        out["ask_size"] = carry_forward(_last(ask_size, ends, filled))
        depth = bid_size + ask_size
        with np.errstate(invalid="ignore", divide="ignore"):
            obi = np.where(depth > 0, (bid_size - ask_size) / depth, 0.0)
        _ohlc(out, obi, starts, ends, filled, "obi_")
        out["quote_count"] = counts
    else:
        _ohlc(out, col("mid_point"), starts, ends, filled, "")
        out["tick_count"] = counts
    out["empty"] = ~filled
    frame = pd.DataFrame(out)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], unit="ns", utc=True)
    return frame


def _ohlc(
    out: dict[str, np.ndarray],
    values: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    filled: np.ndarray,
    prefix: str,
) -> None:
    n = len(filled)
    opens, highs, lows, closes = (np.full(n, np.nan) for _ in range(4))
    if len(starts):
        opens[filled] = values[starts]
        closes[filled] = values[ends]
        highs[filled] = np.maximum.reduceat(values, starts)
        lows[filled] = np.minimum.reduceat(values, starts)
    carried = carry_forward(closes)
    # An empty bar is flat at the previous close.
    for arr in (opens, highs, lows):
        arr[~filled] = carried[~filled]
    out[f"{prefix}open"], out[f"{prefix}high"], out[f"{prefix}low"], out[f"{prefix}close"] = opens, highs, lows, carried


def _sum(values: np.ndarray, starts: np.ndarray, filled: np.ndarray) -> np.ndarray:
    result = np.zeros(len(filled))
    if len(starts):
        result[filled] = np.add.reduceat(values, starts)
    return result


def _last(values: np.ndarray, ends: np.ndarray, filled: np.ndarray) -> np.ndarray:
    result = np.full(len(filled), np.nan)
    result[filled] = values[ends]
    return result


def carry_forward(values: np.ndarray) -> np.ndarray:
    """Forward-fill NaNs with the last non-NaN value (leading NaNs stay NaN)."""
    valid = ~np.isnan(values)
    index = np.where(valid, np.arange(len(values)), 0)
    np.maximum.accumulate(index, out=index)
    carried = values[index]
    carried[~valid & (np.cumsum(valid) == 0)] = np.nan
    return carried
