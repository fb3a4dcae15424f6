"""Analytics: footprint bars — per bar and price level, the buy / sell / unknown volume of classified trades.

A footprint splits each bar's trades by price level (prices bucketed on a grid of `price_step`: level
k holds the prices in [k·step, (k+1)·step), the level's price is k·step) and by aggressor side (the side
the one classifier, `side.classify`, gave each trade — the same sides as the bar engine's buy / sell
volume). Definitions (docs/concepts/order-flow.md, "Footprint"):

* per level: buy, sell, unknown volume, delta = buy − sell, trades (count);
* per bar: OHLC of the trade prices (not bucketed), volume, buy / sell volume, delta, trade_count and
  the POC — the level with the most volume (buy + sell + unknown); on a tie, the one closest to the middle
  of the bar's lowest and highest level, then the lower one (the rule of the session volume profile);
* diagonal imbalances, compared inside the bar's range of levels: a level is a `buy_imbalance` when its
  buy > 0 and buy ≥ ratio × the sell of the level one step below; a `sell_imbalance` when its sell > 0 and
  sell ≥ ratio × the buy of the level one step above. A level inside the range where nothing traded counts
  as zero (so any buying above it is an imbalance); the bar's lowest level has no level below and is never a
  buy imbalance, its highest never a sell imbalance.

Only bars with trades are listed, and only levels where something traded (ascending price).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pyarrow as pa

from ib_stream.analytics.grid import BarGrid
from ib_stream.errors import QueryError, ValidationError

DEFAULT_IMBALANCE_RATIO: Final = 3.0
MAX_IMBALANCE_RATIO: Final = 1e6
MAX_CELLS: Final = 500_000  # bar × level cells of one answer
_MAX_LEVEL_INDEX: Final = 2.0**52  # |price / step| beyond this loses the level grid in float64
_SNAP: Final = 1e-6  # a price within this share of a step below a level boundary belongs to the level above
BAR_FIELDS: Final = (
    "open",
    "high",
    "low",
    "close",
    "volume",
    "buy_volume",
    "sell_volume",
    "delta",
    "trade_count",
    "poc",
)
LEVEL_FIELDS: Final = ("price", "buy", "sell", "unknown", "delta", "trades", "buy_imbalance", "sell_imbalance")


def parse_price_step(value: Any, field: str = "price_step") -> float:
    """A price step: a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValidationError(field, value, "must be a number greater than 0")
    step = float(value)
    if not np.isfinite(step) or step <= 0:
        raise ValidationError(field, value, "must be a finite number greater than 0")
    return step


def parse_imbalance_ratio(value: Any) -> float:
    """An imbalance ratio: a finite number > 1 (at most MAX_IMBALANCE_RATIO)."""
    if value is None:
        return DEFAULT_IMBALANCE_RATIO
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValidationError("imbalance_ratio", value, "must be a number greater than 1")
    ratio = float(value)
    if not np.isfinite(ratio) or not 1 < ratio <= MAX_IMBALANCE_RATIO:
        raise ValidationError(
            "imbalance_ratio", value, f"must be a finite number greater than 1 (at most {MAX_IMBALANCE_RATIO:g})"
        )
    return ratio


@dataclass(frozen=True, slots=True)
class Footprint:
    """Footprint bars: per listed bar (those with trades) its fields, and its levels at `offsets[i]:offsets[i+1]`."""

    labels: np.ndarray  # bar label (ns) per listed bar
    bars: dict[str, np.ndarray]  # BAR_FIELDS, one value per listed bar
    offsets: np.ndarray  # len(labels) + 1 offsets into the level arrays
    levels: dict[str, np.ndarray]  # LEVEL_FIELDS, one value per (bar, level) cell, ascending price within a bar
    price_step: float
    imbalance_ratio: float

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def cells(self) -> int:
        return int(self.offsets[-1])

    def documents(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per bar (without `timestamp` / `ts`), each with its `levels` list."""
        bars = {name: values.tolist() for name, values in self.bars.items()}
        level_lists = {name: values.tolist() for name, values in self.levels.items()}
        offsets = self.offsets.tolist()
        out = []
        for i in range(len(self.labels)):
            lo, hi = offsets[i], offsets[i + 1]
            columns = [level_lists[name][lo:hi] for name in LEVEL_FIELDS]
            doc = {name: bars[name][i] for name in BAR_FIELDS}
            doc["levels"] = [dict(zip(LEVEL_FIELDS, row, strict=True)) for row in zip(*columns, strict=True)]
            out.append(doc)
        return out

    def long_table(self) -> pa.Table:
        """One row per (bar, level): `timestamp`, the bar's fields (its delta as `bar_delta`), the level's fields."""
        counts = np.diff(self.offsets)
        columns: dict[str, Any] = {
            "timestamp": pa.array(np.repeat(self.labels, counts), pa.int64()).cast(pa.timestamp("ns", tz="UTC"))
        }
        for name in BAR_FIELDS:
            columns["bar_delta" if name == "delta" else name] = np.repeat(self.bars[name], counts)
        columns.update(self.levels)
        return pa.table(columns)

    def to_pandas(self) -> Any:
        """`long_table()` as a DataFrame with a tz-aware UTC `timestamp` column."""
        return self.long_table().to_pandas()


def footprint(
    grid: BarGrid,
    ts: np.ndarray,
    price: np.ndarray,
    size: np.ndarray,
    side: np.ndarray,
    price_step: float,
    imbalance_ratio: float = DEFAULT_IMBALANCE_RATIO,
    max_cells: int = MAX_CELLS,
) -> Footprint:
    """The footprint of trades sorted by ts (side +1 buy, −1 sell, 0 unknown) over the bars of `grid`.

    Trades outside every bar window are ignored. Refuses (QueryError naming `price_step`) more than
    `max_cells` bar × level cells.
    """
    step = parse_price_step(price_step)
    ratio = parse_imbalance_ratio(imbalance_ratio)
    ts = np.asarray(ts, dtype=np.int64)
    price = np.asarray(price, dtype=np.float64)
    size = np.asarray(size, dtype=np.float64)
    side = np.asarray(side, dtype=np.int8)
    bar = np.searchsorted(grid.starts, ts, side="right") - 1
    inside = bar >= 0
    inside[inside] &= ts[inside] < grid.ends[bar[inside]]
    bar, price, size, side = bar[inside], price[inside], size[inside], side[inside]
    scaled = price / step
    if len(scaled) and not np.all(np.abs(scaled) < _MAX_LEVEL_INDEX):
        raise ValidationError("price_step", price_step, "is too small for the traded prices (no price grid this fine)")
    level = np.floor(scaled + _SNAP).astype(np.int64)

    # Bars: trades are in time order, so each bar's trades are contiguous.
    starts = np.flatnonzero(np.r_[True, bar[1:] != bar[:-1]]) if len(bar) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(bar)].astype(np.int64) if len(starts) else starts
    buy = np.where(side > 0, size, 0.0)
    sell = np.where(side < 0, size, 0.0)
    unknown = np.where(side == 0, size, 0.0)

    # Cells: (bar, level) groups, ascending level within a bar.
    order = np.lexsort((level, bar))
    cell_bar, cell_level = bar[order], level[order]
    first = (
        np.flatnonzero(np.r_[True, (cell_bar[1:] != cell_bar[:-1]) | (cell_level[1:] != cell_level[:-1])])
        if len(order)
        else np.zeros(0, np.int64)
    )
    if len(first) > max_cells:
        raise QueryError(
            f"price_step {price_step:g} gives {len(first)} bar × price cells; at most {max_cells} per request: "
            "use a larger price_step, a larger resolution or a shorter range",
            details={"field": "price_step", "value": price_step, "cells": len(first), "max_cells": max_cells},
        )
    cell_buy = _sums(buy[order], first)
    cell_sell = _sums(sell[order], first)
    cell_unknown = _sums(unknown[order], first)
    cell_trades = np.diff(np.r_[first, len(order)]).astype(np.int64)
    c_bar, c_level = cell_bar[first], cell_level[first]
    offsets = np.searchsorted(c_bar, bar[starts], side="left") if len(starts) else np.zeros(0, np.int64)
    offsets = np.r_[offsets, len(first)].astype(np.int64)

    # Diagonal imbalances inside each bar's range of levels.
    same_below = np.r_[False, c_bar[1:] == c_bar[:-1]]  # a level of the same bar lies below
    same_above = np.r_[c_bar[1:] == c_bar[:-1], False]
    adjacent_below = same_below & np.r_[False, c_level[1:] - c_level[:-1] == 1]
    adjacent_above = same_above & np.r_[c_level[1:] - c_level[:-1] == 1, False]
    sell_below = np.where(adjacent_below, np.r_[0.0, cell_sell[:-1]], 0.0)
    buy_above = np.where(adjacent_above, np.r_[cell_buy[1:], 0.0], 0.0)
    buy_imbalance = same_below & (cell_buy > 0) & (cell_buy >= ratio * sell_below)
    sell_imbalance = same_above & (cell_sell > 0) & (cell_sell >= ratio * buy_above)

    volume = cell_buy + cell_sell + cell_unknown
    decimals = min(15, max(0, int(np.ceil(-np.log10(step)))) + 6)
    level_price = np.round(c_level * step, decimals)
    bars = {
        "open": price[starts],
        "high": np.maximum.reduceat(price, starts) if len(starts) else np.zeros(0),
        "low": np.minimum.reduceat(price, starts) if len(starts) else np.zeros(0),
        "close": price[ends - 1],
        "volume": _sums(size, starts),
        "buy_volume": _sums(buy, starts),
        "sell_volume": _sums(sell, starts),
        "trade_count": (ends - starts).astype(np.int64),
        "poc": level_price[_poc(c_bar, c_level, volume, offsets)] if len(starts) else np.zeros(0),
    }
    bars["delta"] = bars["buy_volume"] - bars["sell_volume"]
    levels = {
        "price": level_price,
        "buy": cell_buy,
        "sell": cell_sell,
        "unknown": cell_unknown,
        "delta": cell_buy - cell_sell,
        "trades": cell_trades,
        "buy_imbalance": buy_imbalance,
        "sell_imbalance": sell_imbalance,
    }
    labels = grid.labels[bar[starts]] if len(starts) else np.zeros(0, np.int64)
    return Footprint(labels, bars, offsets, levels, step, ratio)


def _sums(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.add.reduceat(values, starts) if len(starts) else np.zeros(0)


def _poc(c_bar: np.ndarray, c_level: np.ndarray, volume: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per bar, the index of its POC cell: most volume, then closest to the middle of its levels, then lowest."""
    lowest = c_level[offsets[:-1]]
    highest = c_level[offsets[1:] - 1]
    per_cell = np.repeat(lowest + highest, np.diff(offsets))
    distance = np.abs(2 * c_level - per_cell)  # twice the distance to the middle, in steps
    order = np.lexsort((c_level, distance, -volume, c_bar))
    return order[offsets[:-1]]
