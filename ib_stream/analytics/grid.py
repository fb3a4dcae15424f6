"""Analytics: the bar grid — which bars a request has, the windows of event time each aggregates, and the
vectorised reductions over those windows that every bar field is built from.

Resolutions: `tick` (no bars), intraday sizes `1s` … `1h` and `24h` aligned to multiples of the size
since the epoch in UTC, and `1d` = one bar per trading session of the contract's calendar (labelled with
the session start). Windows are clipped to the requested range, so the first and last bar may be
partial; ticks outside every window (e.g. the CME daily break for `1d`) belong to no bar.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from ib_stream.calendars import Session
from ib_stream.clock import NS_PER_SECOND
from ib_stream.errors import QueryError, ValidationError

SESSION_RESOLUTION: Final = "1d"
# Bar sizes aligned in UTC (`1d` is not one of them: it is a trading session).
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
    "24h": 86_400 * NS_PER_SECOND,
}
BAR_RESOLUTIONS: Final = (*BAR_SIZES, SESSION_RESOLUTION)
RESOLUTIONS: Final = ("tick", *BAR_RESOLUTIONS)
MAX_BARS: Final = 2_000_000


def parse_resolution(value: str | None) -> str:
    """Return a valid resolution name (`tick` when None) or raise naming the value."""
    if value is None:
        return "tick"
    if value not in RESOLUTIONS:
        raise ValidationError("resolution", value, f"is not one of {', '.join(RESOLUTIONS)}")
    return value


def parse_bar_resolution(value: str | None, default: str = "1m") -> str:
    """A bar size (`1s` … `24h`, or `1d` = one bar per session); `tick` is not a bar."""
    resolution = parse_resolution(value or default)
    if resolution not in BAR_RESOLUTIONS:
        raise ValidationError("resolution", value, f"is not a bar size (use one of {', '.join(BAR_RESOLUTIONS)})")
    return resolution


def bar_count(start_ns: int, end_ns: int, resolution: str) -> int:
    """How many UTC-aligned bars of `resolution` cover [start_ns, end_ns)."""
    size = BAR_SIZES[resolution]
    return -(-(end_ns - (start_ns - start_ns % size)) // size)


def bar_estimate(start_ns: int, end_ns: int, resolution: str) -> int:
    """How many bars [start_ns, end_ns) can hold at `resolution`, known before any calendar or file is read
    (for `1d`, one session per day: the days the range touches)."""
    return bar_count(start_ns, end_ns, "24h" if resolution == SESSION_RESOLUTION else resolution)


def check_bar_count(count: int, resolution: str) -> None:
    """Refuse more than MAX_BARS bars in one query, naming the resolution."""
    if count > MAX_BARS:
        raise QueryError(
            f"{count} bars of {resolution} is too many for one query (max {MAX_BARS}); use a larger resolution",
            details={"field": "resolution", "value": resolution, "bars": count},
        )


def bar_edges(start_ns: int, end_ns: int, resolution: str) -> np.ndarray:
    """Bar start times (UTC-aligned) covering [start_ns, end_ns)."""
    size = BAR_SIZES[resolution]
    count = bar_count(start_ns, end_ns, resolution)
    check_bar_count(count, resolution)
    return start_ns - start_ns % size + np.arange(count, dtype=np.int64) * size


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
    def of_starts(cls, labels: np.ndarray, size_ns: int, resolution: str = "") -> BarGrid:
        """Bars of `size_ns` starting at the sorted `labels` (gaps between them allowed)."""
        labels = np.asarray(labels, dtype=np.int64)
        return cls(labels, labels, labels + size_ns, resolution)

    @classmethod
    def of_sessions(cls, sessions: Sequence[Session], start_ns: int, end_ns: int) -> BarGrid:
        """One bar per session (labelled with the session start), clipped to [start_ns, end_ns)."""
        check_bar_count(len(sessions), SESSION_RESOLUTION)
        labels = np.array([s.start_ns for s in sessions], dtype=np.int64)
        ends = np.array([s.end_ns for s in sessions], dtype=np.int64)
        return cls(labels, np.maximum(labels, start_ns), np.minimum(ends, end_ns), SESSION_RESOLUTION)

    def __len__(self) -> int:
        return len(self.labels)

    def locate(self, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index ranges [lo, hi) of sorted `ts` that fall in each bar's window."""
        return np.searchsorted(ts, self.starts, side="left"), np.searchsorted(ts, self.ends, side="left")

    def edges(self) -> np.ndarray:
        """Every window boundary, sorted and unique (where a per-second row must be split)."""
        return np.unique(np.concatenate((self.starts, self.ends)))

    @property
    def on_seconds(self) -> bool:
        """Whether every window starts and ends on a whole second (per-second rows then serve it)."""
        return not ((self.starts % NS_PER_SECOND).any() or (self.ends % NS_PER_SECOND).any())


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


def carry_forward(values: np.ndarray) -> np.ndarray:
    """Forward-fill NaNs with the last non-NaN value (leading NaNs stay NaN)."""
    valid = ~np.isnan(values)
    index = np.where(valid, np.arange(len(values)), 0)
    np.maximum.accumulate(index, out=index)
    carried = values[index]
    carried[~valid & (np.cumsum(valid) == 0)] = np.nan
    return carried


@dataclass(frozen=True, slots=True)
class Segments:
    """Sorted instants split at reset instants: the segment of each and cumulative sums within a segment."""

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
        """The running value at each instant: the cumulative after the `before` first values, if they
        lie in the instant's segment, else 0 (nothing since the last reset)."""
        segment_of_instant = np.searchsorted(self.resets, instants, side="right")
        last = np.maximum(before - 1, 0)
        inside = (before > 0) & (self.segment[last] == segment_of_instant) if len(cumulative) else before > 0
        values = np.zeros(len(instants), dtype=np.float64)
        values[inside] = cumulative[last[inside]]
        return values

    def resets_inside(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Whether a reset falls strictly inside each window (start, end)."""
        return np.searchsorted(self.resets, ends, side="left") > np.searchsorted(self.resets, starts, side="right")
