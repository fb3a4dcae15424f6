"""Parsing of request parameters shared by the routes; every failure names the field and value.

Times of a request are parsed by `ib_stream.times.parse_http_time` (an offset or Z is required).
"""

from __future__ import annotations

import re
from typing import Annotated, Final

from fastapi import Path

from ib_stream.analytics.grid import bar_estimate
from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import TickType
from ib_stream.errors import QueryError, ValidationError
from ib_stream.settings import ApiConfig
from ib_stream.times import iso_us

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)\s*$", re.IGNORECASE)
_UNIT_NS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_tick_types(
    value: str | None, field: str = "tick_types", default: tuple[TickType, ...] = ()
) -> tuple[TickType, ...]:
    """Parse a comma list of tick types (snake_case or PascalCase)."""
    if value is None or not value.strip():
        if default:
            return default
        raise ValidationError(field, value or "", "is required (e.g. bid_ask,last)")
    return TickType.parse_list([v for v in value.split(",") if v.strip()] or [value])


def parse_duration(value: str, field: str = "buffer_duration") -> int:
    """Parse `90s`, `15m`, `1h`, `2d` into nanoseconds."""
    match = _DURATION.match(value or "")
    if not match:
        raise ValidationError(field, value, "is not a duration like 30s, 15m, 1h or 1d")
    seconds = float(match.group(1)) * _UNIT_NS[match.group(2).lower()]
    if seconds <= 0 or seconds > 366 * 86400:
        raise ValidationError(field, value, "must be between 1s and 366d")
    return int(seconds * NS_PER_SECOND)


def check_range(api: ApiConfig, start_ns: int, end_ns: int, field: str = "start_time") -> None:
    """Refuse ranges longer than api.max_range_days (naming the field)."""
    days = (end_ns - start_ns) / NS_PER_SECOND / 86400
    if days > api.max_range_days:
        raise QueryError(
            f"{field} {iso_us(start_ns)} asks for {days:.1f} days; at most {api.max_range_days:g} "
            "days per request (api.max_range_days)",
            details={"field": field, "value": iso_us(start_ns), "max_range_days": api.max_range_days},
        )


MAX_CONTRACT_ID: Final = 2**63 - 1  # a conId is a positive 64-bit integer at most
ContractIdPath = Annotated[
    int, Path(ge=1, le=MAX_CONTRACT_ID, description="IB contract id (conId) of a configured contract.")
]


def check_bar_budget(api: ApiConfig, start_ns: int, end_ns: int, resolution: str) -> None:
    """Refuse a bar request past api.max_bars (its range over its resolution), naming the resolution, before
    any calendar or file is read."""
    bars = bar_estimate(start_ns, end_ns, resolution)
    if bars > api.max_bars:
        raise QueryError(
            f"resolution {resolution} over {iso_us(start_ns)} .. {iso_us(end_ns)} asks for {bars} bars; at most "
            f"{api.max_bars} per request (api.max_bars): narrow the range or use a larger resolution",
            details={"field": "resolution", "value": resolution, "bars": bars, "max_bars": api.max_bars},
        )
