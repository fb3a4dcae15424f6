"""Injected clocks: the only place the store asks what time it is (UTC int64 ns)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Protocol

NS_PER_SECOND = 1_000_000_000


class Clock(Protocol):
    """Anything that tells the current UTC time in integer nanoseconds."""

    def now_ns(self) -> int: ...


class SystemClock:
    """The wall clock."""

    def now_ns(self) -> int:
        return time.time_ns()


class ManualClock:
    """A clock that moves only when told to; thread-safe, for tests and replays."""

    def __init__(self, start: datetime | int) -> None:
        self._lock = threading.Lock()
        self._now = start if isinstance(start, int) else to_ns(start)

    def now_ns(self) -> int:
        with self._lock:
            return self._now

    def set(self, when: datetime | int) -> None:
        """Jump to `when`."""
        with self._lock:
            self._now = when if isinstance(when, int) else to_ns(when)

    def advance(self, seconds: float) -> None:
        """Move forward by `seconds`."""
        with self._lock:
            self._now += int(seconds * NS_PER_SECOND)


def to_ns(when: datetime) -> int:
    """Convert an aware datetime (naive = local time) to UTC int64 ns, exactly to the microsecond."""
    if when.tzinfo is None:
        when = when.astimezone()
    delta = when.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * NS_PER_SECOND + delta.microseconds * 1_000


def from_ns(ns: int) -> datetime:
    """Convert UTC int64 ns to an aware UTC datetime (microsecond precision)."""
    return datetime.fromtimestamp(ns // NS_PER_SECOND, tz=UTC).replace(microsecond=(ns % NS_PER_SECOND) // 1000)
