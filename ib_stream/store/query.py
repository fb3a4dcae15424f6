"""Range queries: plan from the catalog, read only the needed files, row groups and columns,
merge cold (seq < hot watermark) with hot (seq >= watermark) so every tick comes back once,
then optionally aggregate into bars; results are cached without ever going stale.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from ib_stream import budget
from ib_stream.clock import Clock
from ib_stream.domain import StreamKey, TickType
from ib_stream.store.cache import QueryCache
from ib_stream.store.hotcache import HotSnapshot
from ib_stream.store.index import PartitionIndex
from ib_stream.store.layout import Layout
from ib_stream.store.schema import arrow_schema, read_parquet_range, sort_table


class HotSource(Protocol):
    """Where a query finds a stream's ticks that are not (or not only) in the archive."""

    def snapshot(self, stream: StreamKey) -> HotSnapshot: ...

    def token(self, streams: Sequence[StreamKey]) -> Hashable:
        """Part of the cache key; `None` when a change tracker keeps the cache fresh instead."""
        ...


class QueryEngine:
    """Answers range queries over archive ∪ hot tier; thread-safe, synchronous."""

    def __init__(self, layout: Layout, index: PartitionIndex, hot: HotSource, cache: QueryCache, clock: Clock) -> None:
        self.layout = layout
        self.index = index
        self.hot = hot
        self.cache = cache
        self.clock = clock

    def query(
        self, contract_id: int, tick_types: Sequence[TickType], start_ns: int, end_ns: int, limit: int | None = None
    ) -> pd.DataFrame:
        """The ticks of [start_ns, end_ns) as a DataFrame (`tick_type` column when several types; merged by ts);
        with `limit`, only the first `limit` of them (and only as much read as they need)."""
        streams = [StreamKey(contract_id, t) for t in tick_types]
        frame = self.frames(
            ("ticks", start_ns, limit),
            streams,
            start_ns,
            end_ns,
            lambda s: _tick_frame(self.read_stream(s, start_ns, end_ns, limit=limit)),
        )
        return frame if limit is None or len(frame) <= limit else frame.iloc[:limit]

    def count(self, stream: StreamKey, start_ns: int, end_ns: int) -> int:
        """How many ticks of `stream` have start_ns <= ts < end_ns — the files wholly inside the range from the
        catalog, only the edge files (and those overlapping the hot tier) read, their ts column alone."""
        with self.index.readers.reading():
            snapshot = self.hot.snapshot(stream)
            count = snapshot.select(start_ns, end_ns, stream.tick_type).num_rows
            for f in self.index.plan(stream, start_ns, end_ns, below_seq=snapshot.lower_seq):
                budget.check()
                if start_ns <= f.start_time and f.end_time < end_ns and f.last_seq < snapshot.lower_seq:
                    count += f.tick_count
                    continue
                below = snapshot.lower_seq if f.last_seq >= snapshot.lower_seq else None
                path = self.layout.absolute(f.file_path)
                count += read_parquet_range(
                    path, stream.tick_type, start_ns, end_ns, columns=["ts"], below_seq=below
                ).num_rows
        return count

    def frames(
        self,
        key: Hashable,
        streams: Sequence[StreamKey],
        since_ns: int,
        end_ns: int,
        frame_of: Callable[[StreamKey], pd.DataFrame],
    ) -> pd.DataFrame:
        """One frame per stream from `frame_of`, merged by timestamp, cached under `key` until anything stored in
        [since_ns, end_ns] of the streams changes."""
        key = (key, tuple(streams), end_ns, self.hot.token(streams))
        version = self.cache.tracker.version
        cached = self.cache.get(key, streams, since_ns, end_ns)
        if cached is not None:
            return cached.copy(deep=False)
        frames = []
        for stream in streams:
            frame = frame_of(stream)
            if len(streams) > 1:
                frame.insert(1, "tick_type", stream.tick_type.value)
            frames.append(frame)
        result = frames[0] if len(frames) == 1 else _merge_frames(frames)
        self.cache.put(key, version, result)
        return result.copy(deep=False)

    def read_stream(
        self,
        stream: StreamKey,
        start_ns: int,
        end_ns: int,
        columns: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> pa.Table:
        """Every tick of `stream` with start_ns <= ts < end_ns, exactly once, sorted by (ts, seq); with `limit`,
        the first `limit` of them, reading files (in time order) only until no later file can hold one."""
        with self.index.readers.reading():
            snapshot = self.hot.snapshot(stream)
            files = self.index.plan(stream, start_ns, end_ns, below_seq=snapshot.lower_seq)
            wanted = list(columns) if columns else None
            parts: list[pa.Table] = []
            cutoff: int | None = None  # with a limit: the limit-th smallest ts read so far
            for f in files:
                budget.check()  # between files: a request past its deadline, or whose client left, stops here
                if cutoff is not None and f.start_time > cutoff:
                    break  # this file and every later one start after the first `limit` ticks
                below = snapshot.lower_seq if f.last_seq >= snapshot.lower_seq else None
                table = read_parquet_range(
                    self.layout.absolute(f.file_path),
                    stream.tick_type,
                    start_ns,
                    end_ns,
                    columns=wanted,
                    below_seq=below,
                )
                parts.append(table)
                if limit is not None:
                    cutoff = _kth_ts(parts, limit)
            hot = snapshot.select(start_ns, end_ns, stream.tick_type)
            if wanted is not None:
                hot = hot.select(
                    parts[0].column_names
                    if parts
                    else sorted(set(wanted) | {"seq", "ts"}, key=arrow_schema(stream.tick_type).names.index)
                )
            parts.append(hot)
        table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        table = sort_table(table)
        if limit is not None and table.num_rows > limit:
            table = table.slice(0, limit)
        return table.select(wanted) if wanted is not None else table


def _kth_ts(parts: list[pa.Table], k: int) -> int | None:
    """The k-th smallest ts over the tables (None while they hold fewer than k rows)."""
    if sum(p.num_rows for p in parts) < k:
        return None
    ts = np.concatenate([p.column("ts").to_numpy().view(np.int64) for p in parts])
    return int(np.partition(ts, k - 1)[k - 1])


# Nullable integer columns (the trade side) stay integers with <NA> instead of becoming floats.
_NULLABLE_INTS = {pa.int8(): pd.Int8Dtype()}


def _tick_frame(table: pa.Table) -> pd.DataFrame:
    frame = table.to_pandas(types_mapper=_NULLABLE_INTS.get)
    frame = frame.rename(columns={"ts": "timestamp"})
    columns = ["timestamp"] + [c for c in frame.columns if c != "timestamp"]
    return frame[columns]


def _merge_frames(frames: list[pd.DataFrame]) -> pd.DataFrame:
    # Columns a type lacks become missing values: booleans and integers stay typed (nullable).
    bool_columns = {c for f in frames for c in f.columns if f[c].dtype == bool}
    frames = [f.astype({c: "boolean" for c in bool_columns if c in f.columns}) for f in frames]
    merged = pd.concat(frames, ignore_index=True, sort=False)
    for column in bool_columns:
        merged[column] = merged[column].astype("boolean")
    # Each frame is sorted; a stable sort on the integer timestamps keeps (tick type, seq) order on ties.
    order = np.argsort(pd.DatetimeIndex(merged["timestamp"]).asi8, kind="stable")
    return merged.take(order).reset_index(drop=True)


def _iso(ns: int) -> str:
    return pd.Timestamp(ns, unit="ns", tz="UTC").isoformat().replace("+00:00", "Z")
