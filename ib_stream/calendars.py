"""Trading sessions from exchange calendars: regular, extended, pre-market, after-hours and overnight windows.

Holidays, early closes, late opens and DST come from `exchange_calendars`; this module only adds the
clock times the calendars do not model (see docs/concepts/sessions.md):

* US equities (XNYS and its aliases XNAS, NYSE, NASDAQ, ARCX, BATS, ...), New York time:
  ``pre_market`` 04:00 → regular open; ``after_hours`` regular close → 20:00 (17:00 on an early-close
  day); ``extended`` = pre-market + regular + after-hours; ``overnight`` 20:00 on the evening before
  the trading date → 04:00 on it (IBKR overnight trading, Sunday to Thursday nights).
* CME Globex (CMES and its aliases CME, CBOT, NYMEX, COMEX), Chicago time: the calendar's session
  opens at 17:00 on the evening before and runs to 17:00; the market itself halts at 16:00 for the
  daily maintenance break, so a session ends at min(calendar close, 16:00). ``regular`` = ``extended``
  = the Globex session; the equity-only types are not available.
* Any other calendar: ``regular`` = ``extended`` = the calendar's session (with its lunch breaks).

Every lookup is a binary search over per-(calendar, session type) arrays built once, vectorised.
"""

from __future__ import annotations

import bisect
import datetime as dt
import threading
import time
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import exchange_calendars as xc
import numpy as np
import pandas as pd

from ib_stream.clock import from_ns
from ib_stream.domain import Contract
from ib_stream.errors import NotFoundError, ValidationError

SESSION_TYPES: Final = ("regular", "extended", "pre_market", "after_hours", "overnight")
DEFAULT_CALENDAR: Final = "XNYS"
# The span every calendar is built for (the store accepts event times from 1990 on).
CALENDAR_START: Final = "1990-01-01"
CALENDAR_END: Final = "2040-12-31"

US_EQUITY: Final = "us_equity"
CME_GLOBEX: Final = "cme_globex"
EXCHANGE: Final = "exchange"
_KIND_OF: Final = {"XNYS": US_EQUITY, "CMES": CME_GLOBEX}
_TYPES_OF: Final = {
    US_EQUITY: SESSION_TYPES,
    CME_GLOBEX: ("regular", "extended"),
    EXCHANGE: ("regular", "extended"),
}

# Clock times the calendars do not hold, in exchange time.
PRE_MARKET_OPEN: Final = dt.time(4, 0)  # US equities, New York
AFTER_HOURS_CLOSE: Final = dt.time(20, 0)
AFTER_HOURS_CLOSE_EARLY: Final = dt.time(17, 0)  # late trading ends at 17:00 on early-close days
OVERNIGHT_OPEN: Final = dt.time(20, 0)  # on the calendar day before the trading date
GLOBEX_DAILY_HALT: Final = dt.time(16, 0)  # CME Globex, Chicago: the daily break is 16:00-17:00
_NO_BREAK: Final = -1
_DATE_TEXT_LEN: Final = 10


@dataclass(frozen=True, slots=True)
class Session:
    """One trading session: [start_ns, end_ns) in UTC ns, minus its breaks, of one trading date."""

    calendar: str
    session_type: str
    date: dt.date
    start_ns: int
    end_ns: int
    timezone: str
    breaks: tuple[tuple[int, int], ...] = ()

    @property
    def start(self) -> dt.datetime:
        """The start in exchange time."""
        return from_ns(self.start_ns).astimezone(ZoneInfo(self.timezone))

    @property
    def end(self) -> dt.datetime:
        """The end (exclusive) in exchange time."""
        return from_ns(self.end_ns).astimezone(ZoneInfo(self.timezone))

    def boundaries(self, timezone: str | None = None) -> tuple[dt.datetime, dt.datetime]:
        """Return (start, end) as aware datetimes in `timezone` (default: exchange time)."""
        zone = _zone(timezone) if timezone else ZoneInfo(self.timezone)
        return from_ns(self.start_ns).astimezone(zone), from_ns(self.end_ns).astimezone(zone)

    def is_open(self, now_ns: int) -> bool:
        """Whether the market trades in this session at `now_ns` (inside it and not in a break)."""
        if not self.start_ns <= now_ns < self.end_ns:
            return False
        return not any(start <= now_ns < end for start, end in self.breaks)

    def in_progress(self, now_ns: int) -> bool:
        """Whether `now_ns` lies between the start and the end (breaks included)."""
        return self.start_ns <= now_ns < self.end_ns


@dataclass(frozen=True, slots=True)
class _Table:
    """All sessions of one type of one calendar, sorted; starts and ends are both increasing."""

    days: list[int]  # trading dates as days since 1970-01-01
    starts: list[int]
    ends: list[int]
    break_starts: list[int]  # _NO_BREAK when the session has no break
    break_ends: list[int]
    has_breaks: bool


class MarketSessions:
    """Session windows of one exchange calendar (default XNYS): `on(date)`, `current(now_ns)`, ...

    Methods that need "now" take it as an argument (the service passes its injected clock); only the
    seed-signature convenience `get_current_session()` reads the wall clock.
    """

    def __init__(self, calendar: str = DEFAULT_CALENDAR) -> None:
        self._calendar = _calendar(calendar)
        self.calendar = calendar
        self.canonical = str(self._calendar.name)
        self.kind = _KIND_OF.get(self.canonical, EXCHANGE)
        self.timezone = str(self._calendar.tz)
        self.session_types: tuple[str, ...] = _TYPES_OF[self.kind]

    @classmethod
    def for_contract(cls, contract: Contract) -> MarketSessions:
        """Sessions of the contract's calendar (`calendar` in config/contracts.toml)."""
        return _instance(contract.calendar)

    def __repr__(self) -> str:
        return f"MarketSessions(calendar={self.calendar!r})"

    # ---- seed signatures -------------------------------------------------------------------------------
    def get_session_boundaries(
        self,
        date: dt.date | str,
        session_type: str = "regular",
        timezone: str | None = "America/New_York",
    ) -> tuple[dt.datetime, dt.datetime]:
        """Return (start, end) of the `session_type` session of trading date `date`, aware in `timezone`."""
        return self.on(date, session_type).boundaries(timezone)

    def get_current_session(
        self, session_type: str = "regular", timezone: str | None = "America/New_York"
    ) -> tuple[dt.datetime, dt.datetime]:
        """Return (start, end) of the session in progress now, or else the most recent one (wall clock)."""
        return self.current(time.time_ns(), session_type).boundaries(timezone)

    # ---- sessions ------------------------------------------------------------------------------------
    def on(self, date: dt.date | str, session_type: str = "regular") -> Session:
        """The session of trading date `date`; NotFoundError when the exchange is closed that day."""
        day = parse_date(date)
        table = self._table(session_type)
        number = (day - _EPOCH_DAY).days
        self._check_range(day, table)
        i = bisect.bisect_left(table.days, number)
        if i == len(table.days) or table.days[i] != number:
            raise NotFoundError(
                f"date {day.isoformat()} ({day.strftime('%A')}) has no session on calendar {self.calendar}: "
                f"{self._closed_reason(day)}",
                details={"field": "date", "value": day.isoformat(), "calendar": self.calendar},
            )
        return self._session(table, i, session_type)

    def current(self, now_ns: int, session_type: str = "regular") -> Session:
        """The session in progress at `now_ns`, or else the most recent one (weekend, holiday, overnight)."""
        table = self._table(session_type)
        return self._session(table, self._latest_index(table, now_ns, session_type), session_type)

    def previous(self, now_ns: int, session_type: str = "regular") -> Session:
        """The session before `current(now_ns)`."""
        table = self._table(session_type)
        i = self._latest_index(table, now_ns, session_type) - 1
        if i < 0:
            raise NotFoundError(
                f"calendar {self.calendar} has no {session_type} session before the first one it holds",
                details={"field": "now_ns", "value": now_ns, "calendar": self.calendar},
            )
        return self._session(table, i, session_type)

    def between(self, start_ns: int, end_ns: int, session_type: str = "regular") -> list[Session]:
        """Every session that overlaps [start_ns, end_ns), in order."""
        table = self._table(session_type)
        first = bisect.bisect_right(table.ends, start_ns)
        last = bisect.bisect_left(table.starts, end_ns)
        return [self._session(table, i, session_type) for i in range(first, last)]

    def is_open_at(self, ts_ns: int, session_type: str = "regular") -> bool:
        """Whether the market trades at `ts_ns` in a session of `session_type` (cheap: one bisect)."""
        table = self._table(session_type)
        i = bisect.bisect_right(table.starts, ts_ns) - 1
        if i < 0 or ts_ns >= table.ends[i]:
            return False
        return not (table.has_breaks and table.break_starts[i] <= ts_ns < table.break_ends[i])

    # ---- internals ----------------------------------------------------------------------------------
    def require_session_type(self, session_type: str, field: str = "session_type") -> str:
        """Return `session_type` if this calendar has it, else raise ValidationError naming `field`."""
        check_session_type(session_type, field)
        if session_type not in self.session_types:
            raise ValidationError(
                field,
                session_type,
                f"is not available for calendar {self.calendar} (a {_KIND_NAMES[self.kind]} calendar; "
                f"use one of {', '.join(self.session_types)})",
                calendar=self.calendar,
            )
        return session_type

    def _table(self, session_type: str) -> _Table:
        return _table(self.canonical, self.kind, self.require_session_type(session_type))

    def _latest_index(self, table: _Table, now_ns: int, session_type: str) -> int:
        i = bisect.bisect_right(table.starts, now_ns) - 1
        if i < 0:
            raise NotFoundError(
                f"calendar {self.calendar} has no {session_type} session before "
                f"{from_ns(now_ns).isoformat()} (it covers {CALENDAR_START}..{CALENDAR_END})",
                details={"field": "now_ns", "value": now_ns, "calendar": self.calendar},
            )
        return i

    def _session(self, table: _Table, i: int, session_type: str) -> Session:
        breaks = ((table.break_starts[i], table.break_ends[i]),) if table.break_starts[i] != _NO_BREAK else ()
        return Session(
            calendar=self.calendar,
            session_type=session_type,
            date=_EPOCH_DAY + dt.timedelta(days=table.days[i]),
            start_ns=table.starts[i],
            end_ns=table.ends[i],
            timezone=self.timezone,
            breaks=breaks,
        )

    def _check_range(self, day: dt.date, table: _Table) -> None:
        first = self._calendar.first_session.date()
        last = self._calendar.last_session.date()
        if not first <= day <= last:
            raise ValidationError(
                "date", day.isoformat(), f"is outside the span of calendar {self.calendar} ({first}..{last})"
            )

    def _closed_reason(self, day: dt.date) -> str:
        if self._calendar.weekmask[day.weekday()] == "0":
            return f"the exchange does not trade on {day.strftime('%A')}s"
        stamp = pd.Timestamp(day)
        name = None
        holidays = self._calendar.regular_holidays
        if holidays is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                names = holidays.holidays(stamp, stamp, return_name=True)
            name = str(names.iloc[0]) if len(names) else None
        return f"a holiday ({name})" if name else "a holiday (the exchange is closed)"


_KIND_NAMES: Final = {US_EQUITY: "US equity", CME_GLOBEX: "CME Globex futures", EXCHANGE: "exchange"}
_EPOCH_DAY: Final = dt.date(1970, 1, 1)


def check_session_type(value: str, field: str = "session_type") -> str:
    """Return `value` if it names a session type, else raise ValidationError naming `field`."""
    if value not in SESSION_TYPES:
        raise ValidationError(field, value, f"is not a session type (use one of {', '.join(SESSION_TYPES)})")
    return value


def parse_date(value: Any, field: str = "date") -> dt.date:
    """Accept a date, a datetime (its own date) or an ISO `YYYY-MM-DD` string."""
    if isinstance(value, dt.datetime | pd.Timestamp):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        text = value.strip()
        if len(text) == _DATE_TEXT_LEN:
            try:
                return dt.date.fromisoformat(text)
            except ValueError:
                pass
        raise ValidationError(field, value, "is not a date in the form YYYY-MM-DD")
    raise ValidationError(field, value, "must be a date or a YYYY-MM-DD string")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as e:
        raise ValidationError("timezone", name, "is not an IANA time zone (e.g. America/New_York)") from e


@lru_cache(maxsize=64)
def _calendar(name: str) -> xc.ExchangeCalendar:
    """Build (once) the calendar covering CALENDAR_START..CALENDAR_END; names are tried as given, then upper."""
    if not isinstance(name, str) or not name.strip():
        raise ValidationError("calendar", name, "must be an exchange_calendars name (e.g. XNYS, XNAS, CMES)")
    with warnings.catch_warnings():
        # exchange_calendars still uses pandas APIs that pandas 3 deprecates; the results are correct.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        for candidate in dict.fromkeys((name.strip(), name.strip().upper())):
            try:
                return xc.get_calendar(candidate, start=CALENDAR_START, end=CALENDAR_END)
            except xc.errors.InvalidCalendarName:
                continue
    raise ValidationError("calendar", name, "is not an exchange_calendars name (e.g. XNYS, XNAS, CMES)")


@lru_cache(maxsize=64)
def _instance(calendar: str) -> MarketSessions:
    return MarketSessions(calendar)


_TABLES: dict[tuple[str, str, str], _Table] = {}
_TABLES_LOCK = threading.Lock()


def _table(canonical: str, kind: str, session_type: str) -> _Table:
    key = (canonical, kind, session_type)
    table = _TABLES.get(key)
    if table is None:
        with _TABLES_LOCK:
            table = _TABLES.get(key)
            if table is None:
                table = _build(_calendar(canonical), kind, session_type)
                _TABLES[key] = table
    return table


def _build(calendar: xc.ExchangeCalendar, kind: str, session_type: str) -> _Table:
    schedule = calendar.schedule
    dates = pd.DatetimeIndex(schedule.index).as_unit("ns")
    opens, closes = _utc_ns(schedule["open"]), _utc_ns(schedule["close"])
    break_starts, break_ends = _utc_ns(schedule["break_start"]), _utc_ns(schedule["break_end"])
    zone = str(calendar.tz)
    starts, ends = opens, closes
    with_breaks = session_type == "regular" and kind != CME_GLOBEX
    if kind == US_EQUITY and session_type != "regular":
        pre_open = _local_ns(dates, 0, PRE_MARKET_OPEN, zone)
        early = pd.DatetimeIndex(calendar.early_closes).as_unit("ns")
        after_close = np.where(
            dates.isin(early),
            _local_ns(dates, 0, AFTER_HOURS_CLOSE_EARLY, zone),
            _local_ns(dates, 0, AFTER_HOURS_CLOSE, zone),
        )
        starts, ends = {
            "extended": (pre_open, after_close),
            "pre_market": (pre_open, opens),
            "after_hours": (closes, after_close),
            "overnight": (_local_ns(dates, -1, OVERNIGHT_OPEN, zone), pre_open),
        }[session_type]
    elif kind == CME_GLOBEX:
        # The calendar closes each session at 17:00 (when the next one opens); trading halts at 16:00.
        ends = np.minimum(closes, _local_ns(dates, 0, GLOBEX_DAILY_HALT, zone))
    if not with_breaks:
        break_starts = break_ends = np.full(len(dates), _NO_BREAK, dtype=np.int64)
    days = (dates.asi8 // (86_400 * 1_000_000_000)).astype(np.int64)
    keep = ends > starts  # a session type can be empty on a day (e.g. a pre-market on a late open at 04:00)
    return _Table(
        days=days[keep].tolist(),
        starts=starts[keep].tolist(),
        ends=ends[keep].tolist(),
        break_starts=break_starts[keep].tolist(),
        break_ends=break_ends[keep].tolist(),
        has_breaks=bool((break_starts[keep] != _NO_BREAK).any()),
    )


def _utc_ns(column: pd.Series) -> np.ndarray:
    """UTC ns of a schedule column; NaT (no break) becomes _NO_BREAK."""
    index = pd.DatetimeIndex(column).as_unit("ns")
    values = index.asi8.copy()
    values[index.isna()] = _NO_BREAK
    return values


def _local_ns(dates: pd.DatetimeIndex, day_offset: int, clock: dt.time, zone: str) -> np.ndarray:
    """UTC ns of `clock` exchange time on each date shifted by `day_offset` days (DST-correct)."""
    local = dates + pd.Timedelta(days=day_offset, hours=clock.hour, minutes=clock.minute)
    return np.asarray(local.tz_localize(zone, ambiguous="raise", nonexistent="raise").as_unit("ns").asi8)
