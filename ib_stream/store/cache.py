"""Query result cache (cachetools LRU + TTL) that is never stale: entries carry the change
version they were computed at, and any change to a stream's data in their time range since
then (new hot ticks, a new part, compaction, retention) makes them miss. Entries expire by the
store's injected clock.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Hashable, Iterable
from typing import Any

from cachetools import TTLCache

from ib_stream.clock import NS_PER_SECOND, Clock
from ib_stream.domain import StreamKey
from ib_stream.store.layout import HOUR_NS, MINUTE_NS


class ChangeTracker:
    """Remembers, per stream and per minute / hour of event time, the last version that changed it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions = itertools.count(1)
        self._current = 0
        self._minutes: dict[StreamKey, dict[int, int]] = {}
        self._hours: dict[StreamKey, dict[int, int]] = {}

    @property
    def version(self) -> int:
        with self._lock:
            return self._current

    def record(self, stream: StreamKey, min_ts: int, max_ts: int) -> None:
        """Note that ticks with event time in [min_ts, max_ts] of `stream` changed."""
        with self._lock:
            version = self._current = next(self._versions)
            minutes = self._minutes.setdefault(stream, {})
            hours = self._hours.setdefault(stream, {})
            first_minute, last_minute = min_ts // MINUTE_NS, max_ts // MINUTE_NS
            if last_minute - first_minute > 180:
                # A wide change (retention, compaction of a long partition): hour granularity is enough.
                for hour in range(min_ts // HOUR_NS, max_ts // HOUR_NS + 1):
                    hours[hour] = version
                    for minute in range(hour * 60, hour * 60 + 60):
                        minutes[minute] = version
                return
            for minute in range(first_minute, last_minute + 1):
                minutes[minute] = version
                hours[minute // 60] = version

    def changed_since(self, streams: Iterable[StreamKey], start_ns: int, end_ns: int, version: int) -> bool:
        """Whether any of `streams` changed in [start_ns, end_ns) after `version`."""
        with self._lock:
            for stream in streams:
                hours = self._hours.get(stream)
                if not hours:
                    continue
                minutes = self._minutes[stream]
                first_hour, last_hour = start_ns // HOUR_NS, (end_ns - 1) // HOUR_NS
                candidates = (
                    (h for h in hours if first_hour <= h <= last_hour)
                    if len(hours) < last_hour - first_hour
                    else (h for h in range(first_hour, last_hour + 1) if h in hours)
                )
                for hour in candidates:
                    if hours[hour] <= version:
                        continue
                    lo = max(hour * 60, start_ns // MINUTE_NS)
                    hi = min(hour * 60 + 59, (end_ns - 1) // MINUTE_NS)
                    if any(minutes.get(m, 0) > version for m in range(lo, hi + 1)):
                        return True
            return False


class QueryCache:
    """Thread-safe LRU + TTL cache of query results, validated against a `ChangeTracker`; an entry lives
    `ttl_seconds` of `clock` time."""

    def __init__(self, size: int, ttl_seconds: float, tracker: ChangeTracker, clock: Clock) -> None:
        self.tracker = tracker
        self._lock = threading.Lock()
        self._cache: TTLCache[Hashable, tuple[int, Any]] | None = (
            TTLCache(maxsize=size, ttl=ttl_seconds, timer=lambda: clock.now_ns() / NS_PER_SECOND) if size > 0 else None
        )
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, streams: Iterable[StreamKey], start_ns: int, end_ns: int) -> Any | None:
        if self._cache is None:
            return None
        with self._lock:
            entry = self._cache.get(key)
        if entry is not None and not self.tracker.changed_since(streams, start_ns, end_ns, entry[0]):
            self.hits += 1
            return entry[1]
        self.misses += 1
        return None

    def put(self, key: Hashable, version: int, value: Any) -> None:
        """Store `value` computed from data as of `version` (read the version before computing)."""
        if self._cache is not None:
            with self._lock:
                self._cache[key] = (version, value)

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
