"""Order-flow requests: what a bars / summary query asks for, validated, and what it returns.

Parsing is shared by Python callers and the HTTP routes; every failure names the field and value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import pyarrow as pa

from ib_stream.analytics.grid import parse_bar_resolution
from ib_stream.domain import TickType
from ib_stream.errors import QueryError, ValidationError
from ib_stream.times import iso_ns

KINDS: Final = ("ohlc", "cvd", "obi")
ANCHORS: Final = ("session", "range")
OBI_SOURCES: Final = ("auto", "depth", "quotes")
TRADE_TYPES: Final = (TickType.LAST, TickType.ALL_LAST)
DEFAULT_LEVELS: Final = 10
MAX_LEVELS: Final = 1000


@dataclass(frozen=True, slots=True)
class BarsRequest:
    """What to compute: kinds of bars of one contract over [start_ns, end_ns)."""

    contract_id: int
    start_ns: int
    end_ns: int
    resolution: str = "1m"
    kinds: tuple[str, ...] = KINDS
    session: str = "regular"
    levels: int = DEFAULT_LEVELS
    trades: TickType = TickType.LAST
    anchor: str = "session"
    obi_source: str = "auto"
    use_recorded_side: bool = True

    def __post_init__(self) -> None:
        if self.end_ns <= self.start_ns:
            raise QueryError(
                f"end_time {iso_ns(self.end_ns)} is not after start_time {iso_ns(self.start_ns)}",
                details={"field": "end_time", "value": iso_ns(self.end_ns), "start_time": iso_ns(self.start_ns)},
            )
        parse_bar_resolution(self.resolution)
        parse_kinds(self.kinds)
        parse_levels(self.levels)
        parse_trades(self.trades)
        _choice("anchor", self.anchor, ANCHORS)
        _choice("obi_source", self.obi_source, OBI_SOURCES)


@dataclass(frozen=True, slots=True)
class BarsResult:
    """Bars as an Arrow table, with where the OBI came from and how the trades' sides were decided."""

    table: pa.Table
    obi_source: str | None = None
    side_methods: dict[str, int] = field(default_factory=dict)

    def to_pandas(self) -> Any:
        """The bars as a DataFrame with a tz-aware UTC `timestamp` column."""
        return self.table.to_pandas()


def parse_kinds(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """A comma list (or sequence) of ohlc, cvd, obi, in that order; all three when empty."""
    items = [v.strip().lower() for v in (value.split(",") if isinstance(value, str) else value or ()) if v.strip()]
    for item in items:
        if item not in KINDS:
            raise ValidationError("kinds", value, f"holds {item!r}, which is not a bar kind (use {', '.join(KINDS)})")
    return tuple(k for k in KINDS if k in items) or KINDS


def parse_levels(value: int | None) -> int:
    """Depth levels per side for OBI (1..MAX_LEVELS; default 10)."""
    if value is None:
        return DEFAULT_LEVELS
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 1 <= value <= MAX_LEVELS:
        raise ValidationError("levels", value, f"must be an integer from 1 to {MAX_LEVELS}")
    return int(value)


def parse_trades(value: str | TickType | None) -> TickType:
    """The trade stream: last (default) or all_last."""
    if value is None:
        return TickType.LAST
    tick_type = TickType.parse(value, "trades") if isinstance(value, str) else value
    if tick_type not in TRADE_TYPES:
        raise ValidationError("trades", value, "must be last or all_last")
    return tick_type


def _choice(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValidationError(name, value, f"is not one of {', '.join(allowed)}")
    return value
