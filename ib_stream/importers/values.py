"""Importers: turn the text and JSON values of recorded files into tick field values (times, numbers, sides).

Every parser raises `BadValue(reason)` with a short, stable reason; the importers count skipped rows
by those reasons. Times become UTC int64 nanoseconds, exactly (no float rounding of nanoseconds); a
time written without an offset (ISO-8601 text, a strptime pattern) is UTC, the importers' rule (ISO-8601
text is read by `ib_stream.times.parse_recording_time`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from ib_stream.times import parse_recording_time

TIME_UNITS: Final = ("auto", "s", "ms", "us", "ns", "iso")
_UNIT_NS: Final = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
# `auto` reads a bare number by its magnitude: below 1e11 seconds (up to year 5138), below 1e14
# milliseconds, below 1e17 microseconds, else nanoseconds; each covers 1973..5138 in its unit.
_AUTO_LIMITS: Final = ((1e11, "s"), (1e14, "ms"), (1e17, "us"))
_BUY: Final = frozenset({"buy", "b", "bid", "+1", "1", "buyer"})
_SELL: Final = frozenset({"sell", "s", "a", "ask", "-1", "seller"})
_UNKNOWN_SIDE: Final = frozenset({"", "n", "none", "null", "0", "unknown"})
_TRUE: Final = frozenset({"true", "t", "1", "yes", "y"})
_FALSE: Final = frozenset({"false", "f", "0", "no", "n"})
_DEPTH_SIDES: Final = {"bid": "bid", "b": "bid", "1": "bid", "ask": "ask", "a": "ask", "0": "ask"}
_OPERATIONS: Final = {
    "insert": "insert",
    "0": "insert",
    "update": "update",
    "1": "update",
    "delete": "delete",
    "2": "delete",
}


class BadValue(ValueError):
    """A value that cannot become a tick field; `reason` is short and stable (it is counted)."""

    def __init__(self, reason: str, value: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.value = value


def is_missing(value: Any) -> bool:
    """Whether a cell holds nothing: None, or an empty / blank string."""
    return value is None or (isinstance(value, str) and not value.strip())


# ---- times -------------------------------------------------------------------------------------------


def time_parser(unit: str) -> Callable[[Any], int]:
    """Return a parser of one time cell into UTC ns for `unit` (see TIME_UNITS) or a strptime format (has `%`)."""
    if "%" in unit:
        return lambda value: strptime_ns(value, unit)
    if unit == "iso":
        return parse_iso_ns
    if unit == "auto":
        return auto_ns
    if unit in _UNIT_NS:
        scale = _UNIT_NS[unit]
        return lambda value: epoch_ns(value, scale)
    raise ValueError(f"unknown time unit {unit!r}")


def epoch_ns(value: Any, scale: int) -> int:
    """Convert an epoch number (int, float or decimal text) in a unit of `scale` ns to int ns."""
    if isinstance(value, bool) or value is None:
        raise BadValue("bad timestamp", value)
    if isinstance(value, int):
        return value * scale
    try:
        number = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise BadValue("bad timestamp", value) from None
    if not number.is_finite():
        raise BadValue("bad timestamp", value)
    return int(number * scale)


def auto_ns(value: Any) -> int:
    """Parse an ISO-8601 text, or an epoch number whose unit is read from its magnitude."""
    if isinstance(value, str) and not _looks_numeric(value):
        return parse_iso_ns(value)
    try:
        magnitude = abs(float(value))
    except (TypeError, ValueError):
        raise BadValue("bad timestamp", value) from None
    for limit, unit in _AUTO_LIMITS:
        if magnitude < limit:
            return epoch_ns(value, _UNIT_NS[unit])
    return epoch_ns(value, 1)


def parse_iso_ns(value: Any) -> int:
    """Parse an ISO-8601 cell to UTC ns by the importers' rule (`times.parse_recording_time`: no offset = UTC)."""
    if not isinstance(value, str):
        raise BadValue("bad timestamp", value)
    try:
        return parse_recording_time(value)
    except ValueError:
        raise BadValue("bad timestamp", value) from None


def strptime_ns(value: Any, pattern: str) -> int:
    """Parse with a strptime pattern; a time without an offset is UTC."""
    if not isinstance(value, str):
        raise BadValue("bad timestamp", value)
    try:
        when = datetime.strptime(value.strip(), pattern)
    except ValueError:
        raise BadValue("bad timestamp", value) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _looks_numeric(text: str) -> bool:
    stripped = text.strip().lstrip("+-")
    return bool(stripped) and stripped.replace(".", "", 1).replace("e", "", 1).replace("E", "", 1).isdigit()


# ---- numbers, flags, sides ---------------------------------------------------------------------------


def to_float(value: Any) -> float:
    """A finite float from a number or numeric text (bools are not numbers)."""
    if isinstance(value, bool):
        raise BadValue("not a number", value)
    if isinstance(value, float):
        number = value
    elif isinstance(value, int):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise BadValue("not a number", value) from None
    else:
        raise BadValue("not a number", value)
    if not math.isfinite(number):
        raise BadValue("not finite", value)
    return number


def finite_float(value: Any, what: str, shown: Any) -> float:
    """`to_float(value)`, or BadValue("<what> is not a finite number", shown) (shown: the row part to report)."""
    try:
        return to_float(value)
    except BadValue:
        raise BadValue(f"{what} is not a finite number", shown) from None


def to_int(value: Any) -> int:
    """An integer from an int, an integral float or integer text."""
    if isinstance(value, bool):
        raise BadValue("not an integer", value)
    if isinstance(value, int):
        return value
    number = to_float(value)
    if not number.is_integer():
        raise BadValue("not an integer", value)
    return int(number)


def to_bool(value: Any) -> bool:
    """A flag from a bool, 0/1 or text such as true/false, yes/no (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise BadValue("not true or false", value)


def trade_side(value: Any) -> int | None:
    """A trade's aggressor side: buy/b/bid/+1 → +1, sell/s/a/ask/−1 → −1, empty/n/none/0 → None (unknown)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadValue("not a known side", value)
    if isinstance(value, int | float):
        if value in (1, -1):
            return int(value)
        if value == 0:
            return None
        raise BadValue("not a known side", value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _BUY:
            return 1
        if text in _SELL:
            return -1
        if text in _UNKNOWN_SIDE:
            return None
    raise BadValue("not a known side", value)


def buyer_maker_side(value: Any) -> int:
    """The aggressor side from a "buyer is the maker" flag: true → the seller aggressed (−1), false → +1."""
    try:
        return -1 if to_bool(value) else 1
    except BadValue:
        raise BadValue("not a known side", value) from None


def depth_side(value: Any) -> str:
    """A depth row's side: bid/b/1 → bid, ask/a/0 → ask (IB's updateMktDepth uses 1 bid, 0 ask)."""
    return _coded(value, _DEPTH_SIDES, "depth side")


def depth_operation(value: Any) -> str:
    """A depth operation: insert/update/delete or IB's codes 0/1/2."""
    return _coded(value, _OPERATIONS, "depth operation")


def _coded(value: Any, codes: Mapping[str, str], what: str) -> str:
    # A word or a numeric code, any case; "1.0" (a float column) is the code 1; a bool is never a code.
    text = str(value).strip().lower() if not isinstance(value, bool) else ""
    if text.endswith(".0"):
        text = text[:-2]
    found = codes.get(text)
    if found is None:
        raise BadValue(f"not a known {what}", value)
    return found
