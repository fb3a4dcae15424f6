"""Times at the edges (core): one parser per surface, each with its rule for a time without an offset, and the
one family of formatters of UTC int64 ns.

At rest every timestamp is UTC int64 ns; time zones appear only here and in the session rules.
docs/concepts/times.md explains the rules to users.

| surface    | parser                 | a time without an offset           | accepts                                      |
|------------|------------------------|------------------------------------|----------------------------------------------|
| Python API | `to_utc_ns`            | local time (as `datetime.now()`)    | datetime, date, Timestamp, str, datetime64; ints are ns since the epoch |
| HTTP       | `parse_http_time`      | refused                            | ISO-8601 up to ns, years 1990..2199          |
| CLI        | `parse_cli_time`       | refused                            | ISO-8601 (`datetime.fromisoformat`), to the µs, years 1990..2199; `now`, `-30m` |
| importers  | `parse_recording_time` | UTC                                | ISO-8601, `T` or space, up to 9 fraction digits |

Formatters, all UTC with `Z`: `iso_ns` (9 fraction digits), `iso_us` (6 digits, truncated; the hot path of
the streaming protocol), `iso_compact` (only the digits the value needs) and `iso_basic` (to the second,
for file names).

Event time: `check_event_time` / `screen_event_times` refuse a tick whose `ts` is further ahead of the clock
than a surface allows (live sources: `source_max_future_skew_seconds`; `POST /v2/ticks`:
`api.max_future_skew_seconds`; imports: `imports.max_future_skew_seconds`). One tick in 2036 would otherwise
carry every live bar's watermark with it.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from numbers import Integral
from typing import Any, Final, Literal

import numpy as np
import pandas as pd

from ib_stream.clock import NS_PER_SECOND, to_ns
from ib_stream.errors import TickValidationError, ValidationError

TimeLike = datetime | date | pd.Timestamp | str | int | np.datetime64

HTTP_YEARS: Final = (1990, 2199)
_OFFSET: Final = re.compile(r"(Z|[+-]\d{2}:?\d{2})$", re.IGNORECASE)
_CLI_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_CLI_DURATION: Final = re.compile(r"^\s*(?P<amount>\d{1,9}(?:\.\d{1,9})?)\s*(?P<unit>[smhd])\s*$", re.IGNORECASE)
# `now`, `now-30m`, `-30m`: the lookahead lets a bare `-30m` in; `now-` or `-` alone match nothing.
_CLI_RELATIVE: Final = re.compile(
    r"^(?:now|(?=-))(?:\s*-\s*(?P<amount>\d{1,9}(?:\.\d{1,9})?)\s*(?P<unit>[smhd]))?$", re.IGNORECASE
)
_RECORDING_ISO: Final = re.compile(
    r"^\s*(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?\s*(Z|[+-]\d{2}(?::?\d{2})?)?\s*$",
    re.IGNORECASE,
)


# ---- parsers: one per surface ------------------------------------------------------------------------------
def to_utc_ns(value: TimeLike, field: str = "time") -> int:
    """Convert a time from Python code to UTC int64 ns (the Python API's parser).

    A naive value (datetime, Timestamp or text without an offset) is local time, like `datetime.now()`;
    a `date` is local midnight; ints are nanoseconds since the epoch.
    """
    if isinstance(value, bool):
        raise ValidationError(field, value, "is not a time")
    if isinstance(value, int | np.integer):
        return int(value)
    try:
        if isinstance(value, pd.Timestamp):
            stamp = value
        elif isinstance(value, datetime):
            return to_ns(value)
        elif isinstance(value, date):
            return to_ns(datetime(value.year, value.month, value.day))
        else:
            stamp = pd.Timestamp(value)
    except (ValueError, TypeError) as e:
        raise ValidationError(field, value, "is not a valid time (use ISO-8601 with an offset or Z)") from e
    if stamp is pd.NaT:
        raise ValidationError(field, value, "is not a valid time")
    if stamp.tzinfo is None:
        # Local time with the offset in force on that date (DST), like datetime.astimezone().
        offset = stamp.to_pydatetime(warn=False).astimezone().utcoffset()
        assert offset is not None
        return int(stamp.value) - (offset.days * 86_400 + offset.seconds) * NS_PER_SECOND
    return int(stamp.tz_convert("UTC").value)


def parse_http_time(value: str, field: str) -> int:
    """Parse a time of an HTTP request into UTC int64 ns.

    ISO-8601 with `Z` or an offset (`+HH:MM` or `+HHMM`), up to nanoseconds, years 1990..2199. A time
    without an offset is refused: over HTTP nobody can tell whose local time it would be.
    """
    text = value.strip()
    if not _OFFSET.search(text):
        raise ValidationError(field, value, "needs a UTC offset or Z (e.g. 2025-01-10T14:30:00Z)")
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError) as e:
        raise ValidationError(field, value, "is not an ISO-8601 time") from e
    if stamp is pd.NaT or stamp.tzinfo is None:
        raise ValidationError(field, value, "is not an ISO-8601 time with an offset")
    first, last = HTTP_YEARS
    if not first <= stamp.year <= last:
        raise ValidationError(field, value, f"is outside the years {first}..{last}")
    return int(stamp.tz_convert("UTC").value)


def parse_cli_time(value: str, option: str, now_ns: int | None = None) -> int:
    """Parse a time given on the command line into UTC int64 ns.

    ISO-8601 as `datetime.fromisoformat` reads it (`Z`, `+HH:MM`, `+HHMM` or `+HH`; fraction digits past
    the microsecond are dropped), years 1990..2199 as over HTTP; or a time relative to now: `now`,
    `-30m` / `now-30m` (units s, m, h, d). `now_ns` is now (default: the system clock), so that several
    options of one command share it. An absolute time without an offset is refused rather than guessed.
    """
    text = value.strip()
    relative = _CLI_RELATIVE.match(text)
    if relative is not None:
        now = time.time_ns() if now_ns is None else now_ns
        ns = now - (_cli_amount(relative, option, value) if relative["amount"] else 0)
        if ns < calendar.timegm((HTTP_YEARS[0], 1, 1, 0, 0, 0)) * NS_PER_SECOND:
            raise ValidationError(option, value, f"is before the year {HTTP_YEARS[0]}")
        return ns
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(
            option, value, "is not an ISO-8601 time or a relative one (e.g. 2025-01-10T14:30:00Z, now, -30m)"
        ) from None
    if when.tzinfo is None:
        raise ValidationError(option, value, "has no UTC offset: add Z or +HH:MM (e.g. 2025-01-10T14:30:00Z)")
    first, last = HTTP_YEARS
    if not first <= when.year <= last:  # checked before converting: year 1 or 9999 would overflow
        raise ValidationError(option, value, f"is outside the years {first}..{last}")
    return to_ns(when)


def parse_cli_duration(value: str, option: str) -> int:
    """Parse a duration given on the command line (`--last 2h`: `90s`, `30m`, `1.5h`, `2d`) into ns."""
    match = _CLI_DURATION.match(value)
    if match is None:
        raise ValidationError(option, value, "is not a duration like 90s, 30m, 2h or 1d")
    ns = _cli_amount(match, option, value)
    if ns <= 0:
        raise ValidationError(option, value, "must be longer than 0")
    return ns


def _cli_amount(match: re.Match[str], option: str, value: str) -> int:
    ns = round(float(match["amount"]) * _CLI_UNITS[match["unit"].lower()] * NS_PER_SECOND)
    # Capped so that now minus it stays a time int64 ns, pandas and SQLite can hold.
    if ns > (HTTP_YEARS[1] - HTTP_YEARS[0] + 1) * 366 * 86_400 * NS_PER_SECOND:
        raise ValidationError(option, value, f"is longer than the years {HTTP_YEARS[0]}..{HTTP_YEARS[1]} span")
    return ns


def parse_recording_time(text: str) -> int:
    """Parse a time written in an imported recording into UTC int64 ns, exactly (no float rounding).

    ISO-8601 with `T` or a space, seconds optional, up to 9 fraction digits (`.` or `,`), then `Z`,
    `±HH`, `±HHMM` or `±HH:MM`. A time without an offset is UTC: recordings are written in UTC.
    Raises ValueError when the text is not such a time.
    """
    match = _RECORDING_ISO.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not an ISO-8601 time")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    fields = (int(year), int(month), int(day), int(hour), int(minute), int(second or 0))
    datetime(*fields)  # raises ValueError on a day or hour that does not exist
    ns = calendar.timegm(fields) * NS_PER_SECOND + (int(fraction.ljust(9, "0")) if fraction else 0)
    if offset and offset.upper() != "Z":
        sign = -1 if offset[0] == "-" else 1
        digits = offset[1:].replace(":", "")
        minutes = int(digits[:2]) * 60 + (int(digits[2:4]) if len(digits) > 2 else 0)
        ns -= sign * minutes * 60 * NS_PER_SECOND
    return ns


# ---- formatters ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=4096)
def _second(seconds: int) -> str:
    # Ticks of a stream share their second: caching its text makes iso_us ~6x faster than datetime.isoformat.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def iso_ns(ns: int) -> str:
    """UTC ISO-8601 with nanoseconds and Z: `2025-01-10T14:30:00.000000001Z` (query results, bars, depth)."""
    seconds, rest = divmod(ns, NS_PER_SECOND)
    return f"{_second(seconds)}.{rest:09d}Z"


def iso_us(ns: int) -> str:
    """UTC ISO-8601 with microseconds (truncated) and Z: `2025-01-10T14:30:00.000000Z` (streaming protocol,
    sessions, ledgers)."""
    seconds, rest = divmod(ns, NS_PER_SECOND)
    return f"{_second(seconds)}.{rest // 1000:06d}Z"


def iso_compact(ns: int) -> str:
    """UTC ISO-8601 with Z and only the fraction digits the value needs: `2025-01-10T14:30:00Z` (messages)."""
    return pd.Timestamp(ns, unit="ns", tz="UTC").isoformat().replace("+00:00", "Z")


def iso_basic(ns: int) -> str:
    """UTC ISO-8601 basic format to the second: `20250110T143000Z` (file names)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ns // NS_PER_SECOND))


# ---- event time: how far ahead of the clock a tick may be --------------------------------------------------
@dataclass(frozen=True, slots=True)
class FutureSkew:
    """How far ahead of the clock one surface accepts event times, and the setting that says so (errors name it)."""

    max_ns: int
    setting: str

    @classmethod
    def of_seconds(cls, seconds: float, setting: str) -> FutureSkew:
        return cls(int(seconds * NS_PER_SECOND), setting)


def check_event_time(
    ts: int,
    now_ns: int,
    max_future_skew_ns: int,
    *,
    index: int = 0,
    tick_type: str | None = None,
    setting: str = "max_future_skew_seconds",
) -> None:
    """Raise TickValidationError (field `ts`) when `ts` is more than `max_future_skew_ns` after `now_ns`.

    The error names the tick (`index`, `tick_type`), the value, the limit and the `setting` that sets it:
    `ts 2082758400000000000 (2036-01-01T00:00:00.000000000Z) is after the limit 2025-01-10T14:01:00.000000000Z:
    more than 60 s ahead of the clock (api.max_future_skew_seconds)`. Producers call it before storing;
    importers call it per tick with `imports.max_future_skew_seconds`.
    """
    limit = now_ns + max_future_skew_ns
    if ts > limit:
        skew_seconds = max_future_skew_ns / NS_PER_SECOND
        raise TickValidationError(
            "ts",
            ts,
            f"({iso_ns(ts)}) is after the limit {iso_ns(limit)}: more than {skew_seconds:g} s ahead of the clock "
            f"({setting})",
            tick_type=tick_type,
            index=index,
            limit_ns=limit,
            limit=iso_ns(limit),
            max_future_skew_seconds=skew_seconds,
            setting=setting,
        )


def screen_event_times(
    ticks: Sequence[Any],
    now_ns: int,
    max_future_skew_ns: int,
    *,
    tick_type: str | None = None,
    setting: str = "max_future_skew_seconds",
    on_error: Literal["reject", "skip"] = "reject",
) -> tuple[list[int], list[TickValidationError]]:
    """Check every tick's `ts` with `check_event_time`: return the indexes of the ticks that pass and one error per
    tick that does not (`on_error="skip"`), or raise the first error (`"reject"`). A tick without an integer `ts`
    passes: the tick validator names that problem."""
    kept: list[int] = []
    refused: list[TickValidationError] = []
    limit = now_ns + max_future_skew_ns
    for index, tick in enumerate(ticks):
        ts = tick.get("ts") if isinstance(tick, dict) else _ts_of(tick)
        if type(ts) is not int:
            if isinstance(ts, bool) or not isinstance(ts, Integral):
                kept.append(index)
                continue
            ts = int(ts)
        if ts <= limit:
            kept.append(index)
            continue
        try:
            check_event_time(ts, now_ns, max_future_skew_ns, index=index, tick_type=tick_type, setting=setting)
        except TickValidationError as e:
            if on_error == "reject":
                raise
            refused.append(e)
    return kept, refused


def _ts_of(tick: Any) -> Any:
    # Ticks may be objects with `as_record()` or other mappings (see domain.TickValidator).
    as_record = getattr(tick, "as_record", None)
    if callable(as_record):
        return as_record().get("ts")
    get = getattr(tick, "get", None)
    return get("ts") if callable(get) else None
