"""Session aggregates of trades: VWAP and the volume-at-price profile (point of control, value area).

* VWAP = Σ price·size / Σ size.
* Volume profile: traded volume per price level. With a tick size, prices are snapped to the tick
  grid and every level between the lowest and the highest trade is listed (zero-volume levels
  included, as in Market Profile), unless that grid would exceed `MAX_DENSE_LEVELS`; without a tick
  size (or beyond that limit) the levels are the distinct traded prices.
* Point of control (POC): the level with the most volume; on a tie, the one closest to the middle
  of the profile's price range (then the lower one).
* Value area (default 70 %): start at the POC and repeatedly add the two levels just above or the
  two levels just below it, whichever pair holds more volume (both pairs on a tie), until the area
  holds at least that share of the volume. The loop runs once per added pair of price levels
  (never per trade).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np

VALUE_AREA_SHARE: Final = 0.70
MAX_DENSE_LEVELS: Final = 100_000


@dataclass(frozen=True, slots=True)
class VolumeProfile:
    """Volume per price level (ascending prices) with its POC and value area."""

    price: np.ndarray
    volume: np.ndarray
    poc: float
    value_area_low: float
    value_area_high: float
    value_area_volume: float
    total_volume: float
    value_area_share: float

    def to_dict(self, include_levels: bool = False) -> dict[str, Any]:
        """JSON-ready summary; `include_levels` adds `levels` = [[price, volume], ...]."""
        out: dict[str, Any] = {
            "poc": self.poc,
            "value_area_low": self.value_area_low,
            "value_area_high": self.value_area_high,
            "value_area_volume": self.value_area_volume,
            "value_area_share": self.value_area_share,
            "total_volume": self.total_volume,
            "level_count": len(self.price),
        }
        if include_levels:
            out["levels"] = [[float(p), float(v)] for p, v in zip(self.price, self.volume, strict=True)]
        return out


def vwap(price: np.ndarray, size: np.ndarray) -> float:
    """Σ price·size / Σ size (NaN without volume)."""
    size = np.asarray(size, dtype=np.float64)
    total = float(size.sum())
    return float((np.asarray(price, dtype=np.float64) * size).sum() / total) if total > 0 else float("nan")


def price_levels(price: np.ndarray, size: np.ndarray, tick_size: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Volume per price level, ascending (see the module docstring for the grid)."""
    price = np.asarray(price, dtype=np.float64)
    size = np.asarray(size, dtype=np.float64)
    if len(price) == 0:
        return np.zeros(0), np.zeros(0)
    if tick_size is not None and tick_size > 0:
        ticks = np.rint(price / tick_size).astype(np.int64)
        low, high = int(ticks.min()), int(ticks.max())
        if high - low + 1 <= MAX_DENSE_LEVELS:
            volume = np.bincount(ticks - low, weights=size, minlength=high - low + 1)
            levels = np.round(np.arange(low, high + 1) * tick_size, 10)
            return levels, volume
        price = np.round(ticks * tick_size, 10)
    levels, inverse = np.unique(price, return_inverse=True)
    return levels, np.bincount(inverse, weights=size, minlength=len(levels))


def point_of_control(levels: np.ndarray, volume: np.ndarray) -> int:
    """Index of the level with the most volume; ties go to the level nearest the range's middle, then the lower."""
    candidates = np.flatnonzero(volume == volume.max())
    middle = (levels[0] + levels[-1]) / 2
    return int(candidates[np.argmin(np.abs(levels[candidates] - middle))])


def value_area(volume: np.ndarray, poc: int, share: float = VALUE_AREA_SHARE) -> tuple[int, int]:
    """Inclusive index range [low, high] of the value area grown from `poc` two levels at a time."""
    target = share * float(volume.sum())
    low = high = poc
    held = float(volume[poc])
    last = len(volume) - 1
    while held < target and (low > 0 or high < last):
        above = float(volume[high + 1 : high + 3].sum())
        below = float(volume[max(low - 2, 0) : low].sum())
        if above >= below and high < last:
            high = min(high + 2, last)
            held += above
            if above > below or low == 0:
                continue
        if below >= above and low > 0:
            low = max(low - 2, 0)
            held += below
    return low, high


def volume_profile(
    price: np.ndarray, size: np.ndarray, *, tick_size: float | None = None, share: float = VALUE_AREA_SHARE
) -> VolumeProfile | None:
    """The volume profile of some trades with its POC and `share` value area (None without volume)."""
    levels, volume = price_levels(price, size, tick_size)
    total = float(volume.sum()) if len(volume) else 0.0
    if total <= 0:
        return None
    poc = point_of_control(levels, volume)
    low, high = value_area(volume, poc, share)
    return VolumeProfile(
        price=levels,
        volume=volume,
        poc=float(levels[poc]),
        value_area_low=float(levels[low]),
        value_area_high=float(levels[high]),
        value_area_volume=float(volume[low : high + 1].sum()),
        total_volume=total,
        value_area_share=share,
    )
