"""Query result cache (cachetools LRU + TTL) that is never stale: entries carry the change
version they were computed at, and any change to a stream's data in their time range since
then (new hot ticks, a new part, compaction, retention) makes them miss. Entries expire by the
store's injected clock; the cache is bounded in entries and in bytes (an answer larger than the byte
bound is not kept).

The change tracker's cost does not grow with a change's time span: appended ticks are recorded by the
distinct minutes they fall in, and a change spanning more than a few hours (retention, a batch with ticks
years apart) is one interval, not one entry per minute.
"""

from __future__ import annotations

import itertools
import sys
import threading
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa
from cachetools import TTLCache

from ib_stream.clock import NS_PER_SECOND, Clock
from ib_stream.domain import StreamKey
from ib_stream.store.layout import HOUR_NS, MINUTE_NS

WIDE_MINUTES: Final = 180  # a change spanning more minutes than this is kept as one interval
MAX_INTERVALS: Final = 64  # per stream; beyond it the intervals merge into one (wider, never narrower)


class ChangeTracker:
    """Remembers, per stream and per minute / hour of event time, the last version that changed it; wide
    changes as intervals of event time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions = itertools.count(1)
        self._current = 0
        self._minutes: dict[StreamKey, dict[int, int]] = {}
        self._hours: dict[StreamKey, dict[int, int]] = {}
        self._wide: dict[StreamKey, list[tuple[int, int, int]]] = {}  # (start minute, end minute, version)

    @property
    def version(self) -> int:
        with self._lock:
            return self._current

    def record(self, stream: StreamKey, min_ts: int, max_ts: int) -> None:
        """Note that ticks with event time in [min_ts, max_ts] of `stream` changed."""
        first, last = min_ts // MINUTE_NS, max_ts // MINUTE_NS
        with self._lock:
            version = self._current = next(self._versions)
            if last - first > WIDE_MINUTES:
                self._add_interval(stream, first, last, version)
            else:
                self._mark(stream, range(first, last + 1), version)

    def record_ticks(self, stream: StreamKey, stamps: Sequence[int]) -> None:
        """Note that ticks at these event times changed: each distinct minute once, whatever their span."""
        minutes = np.unique(np.asarray(stamps, dtype=np.int64) // MINUTE_NS)
        with self._lock:
            version = self._current = next(self._versions)
            self._mark(stream, minutes.tolist(), version)

    @property
    def entries(self) -> int:
        """How much the tracker holds: minutes, hours and intervals over every stream."""
        with self._lock:
            return (
                sum(len(m) for m in self._minutes.values())
                + sum(len(h) for h in self._hours.values())
                + sum(len(w) for w in self._wide.values())
            )

    def changed_since(self, streams: Iterable[StreamKey], start_ns: int, end_ns: int, version: int) -> bool:
        """Whether any of `streams` changed in [start_ns, end_ns) after `version`."""
        first_minute, last_minute = start_ns // MINUTE_NS, (end_ns - 1) // MINUTE_NS
        with self._lock:
            for stream in streams:
                for lo, hi, changed in self._wide.get(stream, ()):
                    if changed > version and lo <= last_minute and hi >= first_minute:
                        return True
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
                    lo = max(hour * 60, first_minute)
                    hi = min(hour * 60 + 59, last_minute)
                    if any(minutes.get(m, 0) > version for m in range(lo, hi + 1)):
                        return True
            return False

    def _mark(self, stream: StreamKey, minutes: Iterable[int], version: int) -> None:
        by_minute = self._minutes.setdefault(stream, {})
        by_hour = self._hours.setdefault(stream, {})
        for minute in minutes:
            by_minute[minute] = version
            by_hour[minute // 60] = version

    def _add_interval(self, stream: StreamKey, first: int, last: int, version: int) -> None:
        intervals = self._wide.setdefault(stream, [])
        intervals.append((first, last, version))
        if len(intervals) > MAX_INTERVALS:  # one interval over them all, with the newest version: conservative
            self._wide[stream] = [(min(i[0] for i in intervals), max(i[1] for i in intervals), version)]


def size_of(value: Any) -> int:
    """The bytes a cached answer holds (its columns; a rough figure for anything else)."""
    if isinstance(value, pd.DataFrame):
        return int(value.memory_usage(index=True, deep=False).sum())
    if isinstance(value, pa.Table):
        return int(value.nbytes)
    table = getattr(value, "table", None)  # an order-flow result: its bars table
    if isinstance(table, pa.Table):
        return int(table.nbytes)
    return sys.getsizeof(value)


class QueryCache:
    """Thread-safe LRU + TTL cache of query results, validated against a `ChangeTracker`: at most `size` entries
    and `max_bytes` bytes of answers, an entry living `ttl_seconds` of `clock` time."""

    def __init__(
        self, size: int, ttl_seconds: float, tracker: ChangeTracker, clock: Clock, max_bytes: int = 256 * 2**20
    ) -> None:
        self.tracker = tracker
        self.size = size
        self._lock = threading.Lock()
        self._cache: TTLCache[Hashable, tuple[int, Any]] | None = (
            TTLCache(
                maxsize=max_bytes,
                ttl=ttl_seconds,
                timer=lambda: clock.now_ns() / NS_PER_SECOND,
                getsizeof=lambda entry: size_of(entry[1]),
            )
            if size > 0 and max_bytes > 0
            else None
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
        """Store `value` computed from data as of `version` (read the version before computing); an answer
        larger than the byte bound is not kept."""
        if self._cache is None:
            return
        with self._lock:
            try:
                self._cache[key] = (version, value)
            except ValueError:  # larger than the whole cache
                return
            while len(self._cache) > self.size:
                self._cache.popitem()

    @property
    def bytes(self) -> int:
        """The bytes of the answers held now."""
        with self._lock:
            return int(self._cache.currsize) if self._cache is not None else 0

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
