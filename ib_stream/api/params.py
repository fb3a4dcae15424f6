"""Parsing of request parameters shared by the routes; every failure names the field and value."""

from __future__ import annotations

import re
import time
from typing import Annotated, Final

import pandas as pd
from fastapi import Path

from ib_stream.clock import NS_PER_SECOND, iso
from ib_stream.domain import TickType
from ib_stream.errors import ValidationError

_OFFSET = re.compile(r"(Z|[+-]\d{2}:?\d{2})$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)\s*$", re.IGNORECASE)
_UNIT_NS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_time(value: str, field: str) -> int:
    """Parse an ISO-8601 time that carries an offset or `Z` into UTC int64 ns."""
    text = value.strip()
    if not _OFFSET.search(text):
        raise ValidationError(field, value, "needs a UTC offset or Z (e.g. 2025-01-10T14:30:00Z)")
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError) as e:
        raise ValidationError(field, value, "is not an ISO-8601 time") from e
    if stamp is pd.NaT or stamp.tzinfo is None:
        raise ValidationError(field, value, "is not an ISO-8601 time with an offset")
    if not 1990 <= stamp.year <= 2199:
        raise ValidationError(field, value, "is outside the years 1990..2199")
    return int(stamp.tz_convert("UTC").value)


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


def now_iso() -> str:
    """The server's current UTC time, ISO-8601 with Z."""
    return iso(time.time_ns())


MAX_CONTRACT_ID: Final = 2**63 - 1  # a conId is a positive 64-bit integer at most
ContractIdPath = Annotated[
    int, Path(ge=1, le=MAX_CONTRACT_ID, description="IB contract id (conId) of a configured contract.")
]
