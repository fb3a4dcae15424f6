"""Range queries: plan from the catalog, read only the needed files, row groups and columns,
merge cold (seq < hot watermark) with hot (seq >= watermark) so every tick comes back once,
then optionally aggregate into bars; results are cached without ever going stale.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Hashable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from ib_stream.analytics.bars import BAR_INPUTS, make_bars, parse_resolution
from ib_stream.clock import Clock, to_ns
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.errors import IbStreamError, QueryError, ValidationError
from ib_stream.storage.cache import QueryCache
from ib_stream.storage.hotcache import HotSnapshot
from ib_stream.storage.index import PartitionIndex
from ib_stream.storage.layout import Layout
from ib_stream.storage.schema import arrow_schema, read_parquet_range, sort_table

if TYPE_CHECKING:
    from ib_stream.storage.snapshots import BookAt

TimeLike = datetime | date | pd.Timestamp | str | int | np.datetime64


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
        self,
        contract_id: int,
        tick_types: Sequence[TickType],
        start_ns: int,
        end_ns: int,
        resolution: str,
    ) -> pd.DataFrame:
        streams = [StreamKey(contract_id, t) for t in tick_types]
        key = (contract_id, tuple(tick_types), start_ns, end_ns, resolution, self.hot.token(streams))
        version = self.cache.tracker.version
        cached = self.cache.get(key, streams, start_ns, end_ns)
        if cached is not None:
            return cached.copy(deep=False)
        frames = []
        for stream in streams:
            table = self.read_stream(
                stream, start_ns, end_ns, None if resolution == "tick" else BAR_INPUTS.get(stream.tick_type)
            )
            if resolution == "tick":
                frame = _tick_frame(table)
            else:
                frame = make_bars(table, stream.tick_type, start_ns, end_ns, resolution)
            if len(streams) > 1:
                frame.insert(1, "tick_type", stream.tick_type.value)
            frames.append(frame)
        result = frames[0] if len(frames) == 1 else _merge_frames(frames)
        self.cache.put(key, version, result)
        return result.copy(deep=False)

    def read_stream(
        self, stream: StreamKey, start_ns: int, end_ns: int, columns: Sequence[str] | None = None
    ) -> pa.Table:
        """Every tick of `stream` with start_ns <= ts < end_ns, exactly once, sorted by (ts, seq)."""
        with self.index.readers.reading():
            snapshot = self.hot.snapshot(stream)
            files = self.index.plan(stream, start_ns, end_ns, below_seq=snapshot.lower_seq)
            wanted = list(columns) if columns else None
            parts = []
            for f in files:
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
        return table.select(wanted) if wanted is not None else table


class StorageQuery:
    """Public query API: `await StorageQuery().query_range(contract_id, tick_types, start_time, ...)`.

    With no arguments it opens the data root of the default settings read-only (safe while the
    service is writing); the service passes its own engine.
    """

    def __init__(
        self, engine: QueryEngine | None = None, *, config: Any = None, executor: Executor | None = None
    ) -> None:
        if engine is None:
            from ib_stream.storage.readonly import open_readonly_engine

            engine = open_readonly_engine(config)
        self.engine = engine
        self.config = config
        self._contracts: dict[int, Contract] | None = None
        self._executor = executor or ThreadPoolExecutor(
            max_workers=min(4, os.cpu_count() or 2), thread_name_prefix="ib-stream-query"
        )

    async def query_range(
        self,
        contract_id: int,
        tick_types: str | TickType | Sequence[str | TickType],
        start_time: TimeLike,
        end_time: TimeLike | None = None,
        resolution: str | None = None,
    ) -> pd.DataFrame:
        """Return the ticks (or bars) of a contract in [start_time, end_time) as a DataFrame.

        `end_time=None` means now; naive datetimes are local time; `resolution` is `tick` or a bar size.
        """
        args = self._arguments(contract_id, tick_types, start_time, end_time, resolution)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: self.engine.query(*args))

    def query_range_sync(
        self,
        contract_id: int,
        tick_types: str | TickType | Sequence[str | TickType],
        start_time: TimeLike,
        end_time: TimeLike | None = None,
        resolution: str | None = None,
    ) -> pd.DataFrame:
        """The same as `query_range`, for code without an event loop."""
        return self.engine.query(*self._arguments(contract_id, tick_types, start_time, end_time, resolution))

    def _arguments(
        self, contract_id: Any, tick_types: Any, start_time: TimeLike, end_time: TimeLike | None, resolution: str | None
    ) -> tuple[int, tuple[TickType, ...], int, int, str]:
        contract, start, end = self._span(contract_id, start_time, end_time)
        types = TickType.parse_list([tick_types] if isinstance(tick_types, TickType) else tick_types)
        return contract, types, start, end, parse_resolution(resolution)

    def _span(self, contract_id: Any, start_time: TimeLike, end_time: TimeLike | None) -> tuple[int, int, int]:
        """The contract id and [start, end) in UTC ns (end default now), each checked."""
        if isinstance(contract_id, bool) or not isinstance(contract_id, int | np.integer):
            raise ValidationError("contract_id", contract_id, "must be an integer")
        start = to_utc_ns(start_time, "start_time")
        end = self.engine.clock.now_ns() if end_time is None else to_utc_ns(end_time, "end_time")
        if end <= start:
            raise QueryError(
                f"end_time {_iso(end)} is not after start_time {_iso(start)}",
                details={"field": "end_time", "value": _iso(end), "start_time": _iso(start)},
            )
        return int(contract_id), start, end

    async def bars(
        self,
        contract_id: int,
        start_time: TimeLike,
        end_time: TimeLike | None = None,
        resolution: str = "1m",
        kinds: str | Sequence[str] = ("ohlc", "cvd", "obi"),
        *,
        calendar: str | None = None,
        **options: Any,
    ) -> pd.DataFrame:
        """Order-flow bars of a contract in [start_time, end_time) — OHLC with buy / sell volume and VWAP, CVD,
        OBI — as a DataFrame with the columns of `GET /v2/bars` (see docs/concepts/order-flow.md).

        `calendar` (an exchange_calendars name) gives the sessions that reset the CVD and make `1d` bars;
        default: the contract's in the contracts file, else XNYS. `options`: session, anchor, trades, levels,
        obi_source, as in the HTTP API.
        """
        return await asyncio.get_running_loop().run_in_executor(
            self._executor,
            lambda: self.bars_sync(contract_id, start_time, end_time, resolution, kinds, calendar=calendar, **options),
        )

    def bars_sync(
        self,
        contract_id: int,
        start_time: TimeLike,
        end_time: TimeLike | None = None,
        resolution: str = "1m",
        kinds: str | Sequence[str] = ("ohlc", "cvd", "obi"),
        *,
        calendar: str | None = None,
        **options: Any,
    ) -> pd.DataFrame:
        """The same as `bars`, for code without an event loop."""
        from ib_stream.analytics.request import BarsRequest, parse_kinds  # analytics imports this module
        from ib_stream.analytics.service import OrderFlow

        contract_id, start, end = self._span(contract_id, start_time, end_time)
        if "trades" in options:
            options["trades"] = TickType.parse(options["trades"], "trades")
        request = BarsRequest(contract_id, start, end, resolution, parse_kinds(kinds), **options)
        return OrderFlow(self.engine, self._contract(contract_id, calendar)).bars(request).to_pandas()

    def _contract(self, contract_id: int, calendar: str | None) -> Contract:
        """The configured contract (for its calendar), or one made up for an id the contracts file does not list."""
        if self._contracts is None:
            from ib_stream.contracts import load_contracts
            from ib_stream.settings import load_settings

            try:
                self._contracts = {c.con_id: c for c in load_contracts(load_settings().contracts_file)}
            except IbStreamError:  # no contracts file here: every contract is made up
                self._contracts = {}
        contract = self._contracts.get(contract_id) or Contract(contract_id, str(contract_id), calendar="XNYS")
        return contract if calendar is None else dataclasses.replace(contract, calendar=calendar)

    async def book_at(self, contract_id: int, at: TimeLike | None = None, levels: int | None = None) -> BookAt:
        """The L2 book of a contract at `at` (default now): the latest valid snapshot plus at most an hour of deltas."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: self.book_at_sync(contract_id, at, levels)
        )

    def book_at_sync(self, contract_id: int, at: TimeLike | None = None, levels: int | None = None) -> BookAt:
        """The same as `book_at`, for code without an event loop."""
        from ib_stream.storage.snapshots import book_at  # snapshots imports this module

        return book_at(self, contract_id, at, levels)

    def close(self) -> None:
        self._executor.shutdown(wait=False)


def to_utc_ns(value: TimeLike, field: str = "time") -> int:
    """Convert a time to UTC int64 ns; naive values are local time, ints are ns since the epoch."""
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
        return int(stamp.value) - (offset.days * 86_400 + offset.seconds) * 1_000_000_000
    return int(stamp.tz_convert("UTC").value)


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
