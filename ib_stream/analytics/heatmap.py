"""Analytics: the liquidity heatmap — resting L2 size binned on a time × price grid (time-weighted means).

Columns split [start, end) into equal spans of `column_ns` = ceil((end − start) / columns) ns, rounded up to
a whole number of seconds when that is at least a second (the last one clipped at end, so there may be fewer
columns than asked): a long window's column edges then fall on whole seconds and the per-second resting sums
of `second_sums` (the heatmap rollups) bin onto it exactly. Rows are a whole number of price steps
tall, centred on the step grid: the price range covers the steps from ⌊price_low / step⌉ to
⌊price_high / step⌉, widened by half a step each way so every price on the grid lies strictly inside a row,
and a row holds k = ceil(steps / rows) steps (so there may be fewer rows than asked). A cell is the
time-weighted mean, over its column's span, of the summed resting size of the levels whose price lies in its
row — bids and asks in separate matrices. The binning is three `np.bincount`s over the resting intervals
(the partial first and last column of each interval, and a difference array for the columns it spans
whole), whatever the number of depth events. `seconds_heatmap` bins per-second sums the same way (one
`np.bincount`): the cells are the same integrals, summed in another order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from ib_stream.analytics.resting import Resting
from ib_stream.errors import QueryError, ValidationError

DEFAULT_COLUMNS: Final = 1200
MAX_COLUMNS: Final = 4000
DEFAULT_ROWS: Final = 200
MAX_ROWS: Final = 1000
_MAX_STEPS: Final = 10**12  # price steps one answer may span
SECOND_NS: Final = 1_000_000_000


@dataclass(frozen=True, slots=True)
class PriceRows:
    """The price axis: `rows` rows of `height` from `low` (edges), on a grid of `step`."""

    low: float
    height: float
    rows: int
    step: float

    @property
    def high(self) -> float:
        return self.low + self.rows * self.height

    def centres(self) -> np.ndarray:
        """Each row's centre price, ascending."""
        return _tidy(self.low + (np.arange(self.rows) + 0.5) * self.height, self.step)

    def row_of(self, price: np.ndarray) -> np.ndarray:
        """The row of each price (−1 outside the axis)."""
        row = np.floor((np.asarray(price, dtype=np.float64) - self.low) / self.height).astype(np.int64)
        return np.where((row >= 0) & (row < self.rows), row, -1)


@dataclass(frozen=True, slots=True)
class Heatmap:
    """Time-weighted mean resting size per (row, column), bids and asks apart."""

    start_ns: int
    column_ns: int
    columns: int
    axis: PriceRows
    bids: np.ndarray  # rows × columns
    asks: np.ndarray

    @property
    def max_size(self) -> float:
        return float(max(self.bids.max(initial=0.0), self.asks.max(initial=0.0)))

    def column_starts(self) -> np.ndarray:
        return self.start_ns + np.arange(self.columns, dtype=np.int64) * self.column_ns


def parse_grid_size(value: int | None, field: str, default: int, most: int) -> int:
    """Columns or rows: an integer 1..most (default when None)."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 1 <= value <= most:
        raise ValidationError(field, value, f"must be an integer from 1 to {most}")
    return int(value)


def parse_price(value: float | None, field: str) -> float | None:
    """An optional price bound: a finite number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValidationError(field, value, "must be a number")
    if not np.isfinite(float(value)):
        raise ValidationError(field, value, "must be a finite number")
    return float(value)


def price_rows(
    lowest: float,
    highest: float,
    step: float,
    rows: int,
    price_low: float | None = None,
    price_high: float | None = None,
) -> PriceRows:
    """The price axis over [price_low, price_high] (default: the lowest and highest resting price) in at most
    `rows` rows, each a whole number of `step`s, edges half a step off the step grid."""
    low = lowest if price_low is None else price_low
    high = highest if price_high is None else price_high
    if high < low:
        field, value = ("price_high", high) if price_high is not None else ("price_low", low)
        raise ValidationError(field, value, f"leaves no price range (price_low {low:g} > price_high {high:g})")
    first, last = np.ceil(low / step - 1e-9), np.floor(high / step + 1e-9)
    if last < first:  # a range inside one step: the nearest step
        first = last = np.round((low + high) / 2 / step)
    steps = last - first + 1
    if not steps <= _MAX_STEPS:
        raise QueryError(
            f"price_low {low:g} .. price_high {high:g} spans {steps:.3g} price steps of {step:g}; at most "
            f"{_MAX_STEPS} per heatmap",
            details={"field": "price_high", "value": high, "steps": float(steps), "max_steps": _MAX_STEPS},
        )
    per_row = int(np.ceil(steps / rows))
    count = int(np.ceil(steps / per_row))
    return PriceRows(float((first - 0.5) * step), per_row * step, count, step)


@dataclass(frozen=True, slots=True)
class SecondSums:
    """Σ resting size × duration (ns) per (whole second, side, price), only the nonzero ones, sorted by second."""

    second: np.ndarray  # int64 ns of the second's start
    is_ask: np.ndarray
    price: np.ndarray
    weight: np.ndarray

    def __len__(self) -> int:
        return len(self.second)

    def between(self, lo_ns: int, hi_ns: int) -> SecondSums:
        """The sums of the seconds starting in [lo_ns, hi_ns)."""
        a, b = np.searchsorted(self.second, [lo_ns, hi_ns])
        return SecondSums(self.second[a:b], self.is_ask[a:b], self.price[a:b], self.weight[a:b])


def column_span(span_ns: int, columns: int) -> int:
    """The column width of a window of `span_ns` in at most `columns` columns: ceil(span / columns) ns, rounded
    up to whole seconds when at least a second."""
    column_ns = -(-span_ns // columns)
    if column_ns >= SECOND_NS:
        column_ns = -(-column_ns // SECOND_NS) * SECOND_NS
    return int(column_ns)


def second_sums(resting: Resting) -> SecondSums:
    """The resting intervals cut at whole seconds and summed per (second, side, price): size × ns."""
    t0, t1 = resting.t0, resting.t1
    first, last = t0 // SECOND_NS, (t1 - 1) // SECOND_NS
    n = last - first + 1
    which = np.repeat(np.arange(len(t0)), n)
    second = np.repeat(first, n) + (np.arange(len(which)) - np.repeat(np.cumsum(n) - n, n))
    a = np.maximum(t0[which], second * SECOND_NS)
    b = np.minimum(t1[which], (second + 1) * SECOND_NS)
    weight = resting.size[which] * (b - a)
    prices, price_id = np.unique(resting.price, return_inverse=True)
    is_ask = resting.is_ask.astype(np.int64)
    base = int(first.min()) if len(first) else 0
    key = ((second - base) * 2 + is_ask[which]) * len(prices) + price_id[which]
    keys, slot = np.unique(key, return_inverse=True)
    summed = np.bincount(slot, weight, len(keys)).astype(np.float64, copy=False)
    cell, price_of = np.divmod(keys, len(prices)) if len(prices) else (keys, keys)
    keep = summed > 0
    return SecondSums(
        ((cell // 2 + base) * SECOND_NS)[keep], (cell % 2 == 1)[keep], prices[price_of][keep], summed[keep]
    )


def seconds_heatmap(sums: SecondSums, start_ns: int, end_ns: int, columns: int, axis: PriceRows) -> Heatmap:
    """Bin per-second sums (seconds inside [start_ns, end_ns)) as `heatmap` bins intervals; the column edges must
    fall on whole seconds (start_ns and the column span whole seconds)."""
    span = end_ns - start_ns
    column_ns = column_span(span, columns)
    if start_ns % SECOND_NS or column_ns % SECOND_NS:
        raise ValueError(f"column edges {start_ns} + k × {column_ns} ns are not whole seconds")
    count = -(-span // column_ns)
    rows = axis.rows
    row = axis.row_of(sums.price)
    keep = row >= 0
    column = (sums.second[keep] - start_ns) // column_ns
    offset = np.where(sums.is_ask[keep], count * rows, 0) + column * rows + row[keep]
    weights = _binned(offset, sums.weight[keep], 2 * count * rows)
    lengths = np.minimum(column_ns, span - np.arange(count, dtype=np.int64) * column_ns).astype(np.float64)
    out = [
        np.ascontiguousarray((weights[side * count * rows : (side + 1) * count * rows].reshape(count, rows)
                              / lengths[:, None]).T)
        for side in (0, 1)
    ]  # fmt: skip
    return Heatmap(start_ns, int(column_ns), int(count), axis, out[0], out[1])


def heatmap(resting: Resting, start_ns: int, end_ns: int, columns: int, axis: PriceRows) -> Heatmap:
    """Bin resting intervals (within [start_ns, end_ns)) into at most `columns` equal time columns × the axis."""
    span = end_ns - start_ns
    column_ns = column_span(span, columns)
    count = -(-span // column_ns)
    rows = axis.rows
    row = axis.row_of(resting.price)
    keep = row >= 0
    t0, t1 = resting.t0[keep] - start_ns, resting.t1[keep] - start_ns
    size, row, is_ask = resting.size[keep], row[keep], resting.is_ask[keep]
    first_col, last_col = t0 // column_ns, (t1 - 1) // column_ns
    offset = np.where(is_ask, (count + 1) * rows, 0) + row
    total = 2 * (count + 1) * rows
    # Most intervals lie inside one column: size × duration goes to that cell.
    one = first_col == last_col
    weights = _binned((offset + first_col * rows)[one], (size * (t1 - t0))[one], total)
    # The others: their partial first and last columns, and the columns they span whole (+size from
    # first_col + 1, −size from last_col: a difference array over the columns, summed below).
    many = np.flatnonzero(~one)
    f, la, s, a, b, o = first_col[many], last_col[many], size[many], t0[many], t1[many], offset[many]
    weights += _binned(o + f * rows, ((f + 1) * column_ns - a) * s, total)
    weights += _binned(o + la * rows, (b - la * column_ns) * s, total)
    starts = _binned(o + (f + 1) * rows, s * column_ns, total) - _binned(o + la * rows, s * column_ns, total)
    out = []
    lengths = np.minimum(column_ns, span - np.arange(count, dtype=np.int64) * column_ns).astype(np.float64)
    for side in (0, 1):
        part = slice(side * (count + 1) * rows, (side + 1) * (count + 1) * rows)
        whole = np.cumsum(starts[part].reshape(count + 1, rows), axis=0)
        matrix = (weights[part].reshape(count + 1, rows) + whole)[:count] / lengths[:, None]
        out.append(np.ascontiguousarray(matrix.T))
    return Heatmap(start_ns, int(column_ns), int(count), axis, out[0], out[1])


def _binned(index: np.ndarray, weights: np.ndarray, total: int) -> np.ndarray:
    """Σ weights per index as float64 (bincount answers int64 for no input at all)."""
    return np.bincount(index, weights, total).astype(np.float64, copy=False)


def _tidy(prices: np.ndarray, step: float) -> np.ndarray:
    """Prices rounded to a few digits below the step (no 100.07000000000001)."""
    decimals = min(15, max(0, int(np.ceil(-np.log10(step)))) + 6)
    return np.round(prices, decimals)
