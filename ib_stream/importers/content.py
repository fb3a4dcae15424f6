"""Importers: the content key of a tick, and what the store already holds of a stream, matched by it.

The same trade or quote can reach the store through several files or readings — an MBP-1 file and the
trades file of the same session, another preset or mapping, a renamed or re-cut file. An import stores
each tick once by its **content key**: its stream, its event time `ts` (ns) and the value fields of its
type (`KEY_FIELDS`). Attributes that sources disagree on — a trade's side, exchange, conditions and flags, a
quote's past-low / past-high flags — are not part of the key: a trade without a side and the same trade
with its side are one trade (the first one stored keeps its attributes). The store keeps no exchange
trade id, so two identical trades in one nanosecond are told apart by **multiplicity**: when the store
holds a key n times (from any source), the first n ticks of an import with that key are already stored
and the rest are new — two identical trades stay two, and a third copy from another file is not added.

`StoredContent` reads what the store holds of a stream through the query engine one partition (hour) at
a time, keeps at most `HOURS_HELD` hours in memory, and uses up one stored copy per tick it matches.
Ticks the running import appended itself never count as held before it (they are its own seq ranges).
A file whose ticks come back to an hour after `HOURS_HELD` others reads that hour again: what it appended
there is known, the stored copies it had used up are not, so they count as unused (exact for every file
that visits each hour once — any time-ordered file).
"""

from __future__ import annotations

import collections
import operator
from collections.abc import Callable, Sequence
from typing import Any, Final

import numpy as np
import pyarrow as pa

from ib_stream.domain import TICK_FIELDS, StreamKey, TickType
from ib_stream.store.query import QueryEngine

KEY_FIELDS: Final[dict[TickType, tuple[str, ...]]] = {
    TickType.BID_ASK: ("bid_price", "bid_size", "ask_price", "ask_size"),
    TickType.LAST: ("price", "size"),
    TickType.ALL_LAST: ("price", "size"),
    TickType.MID_POINT: ("mid_point",),
    TickType.DEPTH: ("side", "position", "operation", "price", "size", "market_maker", "by_price"),
}
HOURS_HELD: Final = 4
ContentKey = tuple[Any, ...]


def _key_function(tick_type: TickType) -> Callable[[dict[str, Any]], ContentKey]:
    # Values are compared as Python compares them (1 == 1.0, with equal hashes), typed as the parsers typed them.
    required = operator.itemgetter("ts", *(name for name, _ in _REQUIRED[tick_type]))
    optional = _OPTIONAL[tick_type]
    if not optional:
        return lambda tick: required(tick)
    return lambda tick: (*required(tick), *(tick.get(name, default) for name, default in optional))


def content_key(tick_type: TickType, tick: dict[str, Any]) -> ContentKey:
    """The content key of a tick: its `ts`, then the required value fields of its type, then the optional ones (a
    missing one takes its default)."""
    return _KEYS[tick_type](tick)


_SPECS: Final = {t: [s for s in TICK_FIELDS[t] if s.name in names] for t, names in KEY_FIELDS.items()}
_REQUIRED: Final = {t: tuple((s.name, s.default) for s in specs if s.required) for t, specs in _SPECS.items()}
_OPTIONAL: Final = {t: tuple((s.name, s.default) for s in specs if not s.required) for t, specs in _SPECS.items()}
_KEYS: Final = {tick_type: _key_function(tick_type) for tick_type in KEY_FIELDS}


class StoredContent:
    """What the store holds of one stream, by content key, an hour (partition) at a time."""

    def __init__(
        self, engine: QueryEngine, stream: StreamKey, own_ranges: Callable[[], Sequence[tuple[int, int]]]
    ) -> None:
        self.engine = engine
        self.stream = stream
        self.own_ranges = own_ranges  # seq ranges [first, end) this import appended to the stream so far
        self.partition_ns = engine.layout.partition_ns
        self._hours: collections.OrderedDict[int, collections.Counter[ContentKey]] = collections.OrderedDict()
        self._current_start = -(1 << 62)  # the hour of the last key looked up, and its counts
        self._current: collections.Counter[ContentKey] = collections.Counter()

    def take(self, key: ContentKey) -> bool:
        """Whether the store held this tick before the import: if so, one stored copy is used up."""
        ts = key[0]
        if self._current_start <= ts < self._current_start + self.partition_ns:
            held = self._current
        else:
            self._current_start = ts - ts % self.partition_ns
            held = self._current = self._hour(self._current_start)
        count = held.get(key)
        if count:
            held[key] = count - 1
            return True
        return False

    def _hour(self, start: int) -> collections.Counter[ContentKey]:
        held = self._hours.get(start)
        if held is not None:
            self._hours.move_to_end(start)
            return held
        held = self._load(start)
        self._hours[start] = held
        if len(self._hours) > HOURS_HELD:
            self._hours.popitem(last=False)
        return held

    def _load(self, start: int) -> collections.Counter[ContentKey]:
        tick_type = self.stream.tick_type
        fields = [name for name, _ in (*_REQUIRED[tick_type], *_OPTIONAL[tick_type])]
        table = self.engine.read_stream(self.stream, start, start + self.partition_ns, ["seq", "ts", *fields])
        if table.num_rows == 0:
            return collections.Counter()
        seq = table.column("seq").to_numpy()
        own = np.zeros(len(seq), dtype=bool)
        for first, end in self.own_ranges():
            own |= (seq >= first) & (seq < end)
        ts = table.column("ts").cast(pa.int64()).to_pylist()
        columns = [table.column(name).to_pylist() for name in fields]
        keys = list(zip(ts, *columns, strict=True))
        own_keys = {k for k, mine in zip(keys, own.tolist(), strict=True) if mine}
        # A key this import appended had every earlier stored copy used up before it (see the module docstring).
        return collections.Counter(
            k for k, mine in zip(keys, own.tolist(), strict=True) if not mine and k not in own_keys
        )
