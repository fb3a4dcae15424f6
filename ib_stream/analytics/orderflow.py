"""Order-flow bars from classified trades: the bar grid, OHLC with buy/sell volume, CVD and session VWAP.

A `BarGrid` is the list of bars of a request: each bar has a label (its aligned start), and the
window [start, end) of event times it aggregates. Intraday bars are aligned to multiples of the
bar size since the epoch in UTC; `1d` bars are trading sessions (one bar per session of the
requested type, labelled with the session start). Windows are clipped to the requested range, so
the first and last bar may be partial; ticks outside every window (e.g. the CME daily break for
`1d` bars) belong to no bar.

Gap-fill policy: every bar of the grid is returned. A bar without trades has `empty=True`, zero
volume / count / buy / sell volume, `vwap` NaN, and open = high = low = close = the last close
before it (the last trade before the range when the input holds one, else NaN).

CVD: `delta` = Σ side·size of the bar's trades (buy − sell volume); the cumulative value runs over
trades in time order and restarts at 0 at every reset instant (session starts, or the range
start when anchored there). Per bar, cvd_open is the cumulative value at the bar's start,
cvd_close the value at its end, cvd_high / cvd_low the extremes of the path in between (the open,
the value after each trade and 0 at a reset inside the bar). All reductions are numpy
searchsorted + reduceat over sorted columns; only the per-session cumulative sums loop, once per
session.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from ib_stream.analytics.bars import BAR_SIZES, MAX_BARS, bar_edges, carry_forward
from ib_stream.calendars import Session
from ib_stream.errors import QueryError

SESSION_RESOLUTION: Final = "1d"

OHLC_COLUMNS: Final = (
    "open",
    "high",
    "low",
    "close",
    "volume",
    "vwap",
    "trade_count",
    "buy_volume",
    "sell_volume",
    "unknown_volume",
    "session_vwap",
    "empty",
)
CVD_COLUMNS: Final = ("delta", "cvd_open", "cvd_high", "cvd_low", "cvd_close")


@dataclass(frozen=True, slots=True)
class BarGrid:
    """The bars of a request: labels (aligned starts) and the clipped windows [starts, ends) they cover."""

    labels: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    resolution: str

    @classmethod
    def utc(cls, start_ns: int, end_ns: int, resolution: str) -> BarGrid:
        """Bars of `resolution` aligned in UTC covering [start_ns, end_ns)."""
        labels = bar_edges(start_ns, end_ns, resolution)
        starts = np.maximum(labels, start_ns)
        ends = np.minimum(labels + BAR_SIZES[resolution], end_ns)
        return cls(labels, starts, ends, resolution)

    @classmethod
    def of_sessions(cls, sessions: Sequence[Session], start_ns: int, end_ns: int) -> BarGrid:
        """One bar per session (labelled with the session start), clipped to [start_ns, end_ns)."""
        if len(sessions) > MAX_BARS:
            raise QueryError(f"{len(sessions)} session bars is too many for one query (max {MAX_BARS})")
        labels = np.array([s.start_ns for s in sessions], dtype=np.int64)
        ends = np.array([s.end_ns for s in sessions], dtype=np.int64)
        return cls(labels, np.maximum(labels, start_ns), np.minimum(ends, end_ns), SESSION_RESOLUTION)

    def __len__(self) -> int:
        return len(self.labels)

    def locate(self, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index ranges [lo, hi) of sorted `ts` that fall in each bar's window."""
        return np.searchsorted(ts, self.starts, side="left"), np.searchsorted(ts, self.ends, side="left")


# ---- reductions over bar windows -------------------------------------------------------------------------


def segment_reduce(ufunc: np.ufunc, values: np.ndarray, lo: np.ndarray, hi: np.ndarray, fill: float) -> np.ndarray:
    """`ufunc.reduce(values[lo:hi])` for every window; `fill` where the window is empty.

    Windows may leave gaps between them (reduceat over the [lo, hi) pairs, odd results dropped); a
    window's result equals `ufunc.reduce` of its slice exactly (same summation order).
    """
    result = np.full(len(lo), fill, dtype=np.float64)
    filled = hi > lo
    if not filled.any():
        return result
    padded = np.append(np.asarray(values, dtype=np.float64), 0.0)  # hi may equal len(values)
    pairs = np.empty(2 * int(filled.sum()), dtype=np.intp)
    pairs[0::2] = lo[filled]
    pairs[1::2] = hi[filled]
    result[filled] = ufunc.reduceat(padded, pairs)[0::2]
    return result


@dataclass(frozen=True, slots=True)
class Segments:
    """Trades split at reset instants: the segment of each trade and the cumulative sums within it."""

    resets: np.ndarray
    segment: np.ndarray

    @classmethod
    def of(cls, ts: np.ndarray, resets: np.ndarray | Sequence[int]) -> Segments:
        reset_array = np.unique(np.asarray(resets, dtype=np.int64))
        return cls(reset_array, np.searchsorted(reset_array, ts, side="right"))

    def cumsum(self, values: np.ndarray) -> np.ndarray:
        """Cumulative sum of `values` restarting at each segment (sequential order, one pass per segment)."""
        values = np.asarray(values, dtype=np.float64)
        out = np.empty_like(values)
        if len(values) == 0:
            return out
        bounds = np.concatenate(([0], np.flatnonzero(np.diff(self.segment)) + 1, [len(values)]))
        for a, b in itertools.pairwise(bounds):
            np.cumsum(values[a:b], out=out[a:b])
        return out

    def value_at(self, cumulative: np.ndarray, before: np.ndarray, instants: np.ndarray) -> np.ndarray:
        """The running value at each instant: the cumulative after the `before` first trades, if they
        lie in the instant's segment, else 0 (nothing traded since the last reset)."""
        segment_of_instant = np.searchsorted(self.resets, instants, side="right")
        last = np.maximum(before - 1, 0)
        inside = (before > 0) & (self.segment[last] == segment_of_instant) if len(cumulative) else before > 0
        values = np.zeros(len(instants), dtype=np.float64)
        values[inside] = cumulative[last[inside]]
        return values

    def resets_inside(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Whether a reset falls strictly inside each window (start, end)."""
        return np.searchsorted(self.resets, ends, side="left") > np.searchsorted(self.resets, starts, side="right")


# ---- bars ------------------------------------------------------------------------------------------------


def trade_bars(
    grid: BarGrid,
    ts: np.ndarray,
    price: np.ndarray,
    size: np.ndarray,
    side: np.ndarray,
    resets: np.ndarray | Sequence[int] = (),
) -> dict[str, np.ndarray]:
    """OHLC, volume, VWAP, trade count, buy / sell / unknown volume and session VWAP per bar.

    Trades are sorted by ts; trades before the first bar seed the gap fill (last close) and the
    session VWAP, which is Σ price·size / Σ size from the last reset up to the bar's end.
    """
    price = np.asarray(price, dtype=np.float64)
    size = np.asarray(size, dtype=np.float64)
    lo, hi = grid.locate(ts)
    counts = hi - lo
    filled = counts > 0
    add = np.add
    opens = np.full(len(grid), np.nan)
    closes = np.full(len(grid), np.nan)
    opens[filled] = price[lo[filled]]
    closes[filled] = price[hi[filled] - 1]
    highs = segment_reduce(np.maximum, price, lo, hi, np.nan)
    lows = segment_reduce(np.minimum, price, lo, hi, np.nan)
    seed = price[lo[0] - 1] if len(grid) and lo[0] > 0 else np.nan
    carried = carry_forward(np.concatenate(([seed], closes)))[1:]
    for column in (opens, highs, lows):
        column[~filled] = carried[~filled]
    volume = segment_reduce(add, size, lo, hi, 0.0)
    notional = segment_reduce(add, price * size, lo, hi, 0.0)
    side = np.asarray(side)
    segments = Segments.of(ts, resets)
    session_notional = segments.value_at(segments.cumsum(price * size), hi, grid.ends - 1)
    session_volume = segments.value_at(segments.cumsum(size), hi, grid.ends - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        vwap = np.where(volume > 0, notional / volume, np.nan)
        session_vwap = np.where(session_volume > 0, session_notional / session_volume, np.nan)
    return {
        "open": opens,
        "high": highs,
        "low": lows,
        "close": carried,
        "volume": volume,
        "vwap": vwap,
        "trade_count": counts.astype(np.int64),
        "buy_volume": segment_reduce(add, np.where(side == 1, size, 0.0), lo, hi, 0.0),
        "sell_volume": segment_reduce(add, np.where(side == -1, size, 0.0), lo, hi, 0.0),
        "unknown_volume": segment_reduce(add, np.where(side == 0, size, 0.0), lo, hi, 0.0),
        "session_vwap": session_vwap,
        "empty": ~filled,
    }


def cvd_bars(
    grid: BarGrid,
    ts: np.ndarray,
    size: np.ndarray,
    side: np.ndarray,
    resets: np.ndarray | Sequence[int] = (),
) -> dict[str, np.ndarray]:
    """Per-bar delta and OHLC of the cumulative volume delta, restarting at 0 at every reset instant.

    Without resets the cumulative value starts at 0 at the first trade of the input.
    """
    signed = np.asarray(size, dtype=np.float64) * np.asarray(side, dtype=np.float64)
    segments = Segments.of(ts, resets)
    cumulative = segments.cumsum(signed)
    lo, hi = grid.locate(ts)
    delta = segment_reduce(np.add, signed, lo, hi, 0.0)
    opens = segments.value_at(cumulative, lo, grid.starts)
    closes = segments.value_at(cumulative, hi, grid.ends - 1)
    highs = np.fmax(segment_reduce(np.maximum, cumulative, lo, hi, np.nan), np.maximum(opens, closes))
    lows = np.fmin(segment_reduce(np.minimum, cumulative, lo, hi, np.nan), np.minimum(opens, closes))
    reset = segments.resets_inside(grid.starts, grid.ends)
    highs[reset] = np.maximum(highs[reset], 0.0)
    lows[reset] = np.minimum(lows[reset], 0.0)
    return {"delta": delta, "cvd_open": opens, "cvd_high": highs, "cvd_low": lows, "cvd_close": closes}
