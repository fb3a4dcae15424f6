"""Storage: 1-second order-flow rollups per (contract, trade stream, partition) — files, validity, writer, reader.

A rollup file (`Layout.rollup_path`, under `<data_root>/rollups/` wherever the catalog is) holds the rows of
`ib_stream.analytics.rows.hour_rows` for one closed archive partition, written atomically (temp →
fsync → rename → fsync dir). Its Parquet metadata holds a validity key: a hash of the rollup format, the
quote lookback and the sorted (file_path, checksum) lists of the catalog files the rows depend on — the
trade partition, the `bid_ask` partition and the `bid_ask` partition before it (the quote lookback reaches
into it). Late data, compaction and retention all change those lists, so a stale rollup no longer matches
and is bypassed (its hour is computed from the ticks) until `update_rollups` rewrites it; a partition whose
streams still hold unarchived (hot) ticks is never served from a rollup either. Never a stale answer.

`load_rows` gives the service the rows of [from, end): stored rollups where valid, ticks elsewhere. A
rollup whose partition opens with trades whose side depends on the ticks before it (`sensitive`: the tick
rule has no price change yet, or no quote is in the lookback) is recomputed from that partition's ticks with
what the earlier partitions carry in (last trade price, tick direction, last quote — kept in each rollup's
metadata), so the sides are exactly the service's for any context.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ib_stream import budget
from ib_stream.analytics.rows import (
    ROLLUP_SCHEMA,
    ROLLUP_VERSION,
    Carry,
    HourRows,
    Rows,
    concat_rows,
    empty_rows,
    hour_rows,
    rows_table,
    table_rows,
)
from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import StreamKey, TickType
from ib_stream.errors import StorageError
from ib_stream.store.hotcache import HotSnapshot
from ib_stream.store.index import ArchiveFile
from ib_stream.store.layout import Layout, fsync_dir, temp_path
from ib_stream.store.query import QueryEngine

log = logging.getLogger(__name__)
TRADE_STREAMS: Final = (TickType.LAST, TickType.ALL_LAST)
DEFAULT_LOOKBACK_NS: Final = 300 * NS_PER_SECOND
KEY_META: Final = b"ib_stream.rollup.key"
SENSITIVE_META: Final = b"ib_stream.rollup.sensitive"
SUMMARY_META: Final = b"ib_stream.rollup.summary"
EMPTY: Final = HourRows(
    empty_rows(), False, {"trades": 0, "first_price": None, "last_price": None, "last_direction": 0, "quote": None}
)


class RollupStore:
    """The rollup files of one data root (where its layout puts them); `kind` names another kind of rollup of
    the same streams (the heatmap's "resting" sums of depth), stored apart."""

    def __init__(self, layout: Layout, kind: str = "") -> None:
        self.layout = layout
        self.kind = kind

    @classmethod
    def for_engine(cls, engine: QueryEngine, kind: str = "") -> RollupStore:
        """The rollups of the data root the engine reads."""
        return cls(engine.layout, kind)

    def holds(self, stream: StreamKey) -> bool:
        """Whether any rollup of the stream was written (one directory check)."""
        return self.layout.rollup_stream_dir(stream, self.kind).is_dir()

    def key(self, stream: StreamKey, partition_start: int) -> str | None:
        """The validity key stored in a rollup file (None when missing or unreadable)."""
        path = self.layout.rollup_path(stream, partition_start, self.kind)
        try:
            metadata = pq.read_schema(path).metadata or {}
        except (OSError, pa.ArrowInvalid):
            return None
        value = metadata.get(KEY_META)
        return value.decode() if value else None

    def read_table(self, stream: StreamKey, partition_start: int, key: str, schema: pa.Schema) -> pa.Table | None:
        """A rollup table whose key is `key` and whose columns are `schema`'s; None when missing, stale or
        unreadable."""
        path = self.layout.rollup_path(stream, partition_start, self.kind)
        try:
            table = pq.read_table(path)
        except FileNotFoundError:
            return None
        except (OSError, pa.ArrowInvalid) as e:
            log.warning("rollup %s is unreadable and is ignored: %s", path, e)
            return None
        metadata = table.schema.metadata or {}
        if metadata.get(KEY_META, b"").decode() != key or not table.schema.equals(schema, check_metadata=False):
            return None
        return table

    def write_table(self, stream: StreamKey, partition_start: int, table: pa.Table, key: str) -> Path:
        """Write a rollup table with its key atomically (temp → fsync → rename → fsync dir)."""
        final = self.layout.rollup_path(stream, partition_start, self.kind)
        final.parent.mkdir(parents=True, exist_ok=True)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), KEY_META: key.encode()})
        temp = temp_path(final)
        try:
            with open(temp, "wb") as handle:
                pq.write_table(table, handle, compression="zstd")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, final)
            fsync_dir(final.parent)
        except OSError as e:
            temp.unlink(missing_ok=True)
            raise StorageError(f"rollup {final} cannot be written: {e}", details={"path": str(final)}) from e
        return final

    def read(self, stream: StreamKey, partition_start: int, key: str) -> HourRows | None:
        """The rows of a trade-stream rollup whose key is `key`; None when missing, stale or unreadable."""
        table = self.read_table(stream, partition_start, key, ROLLUP_SCHEMA)
        if table is None:
            return None
        metadata = table.schema.metadata or {}
        summary = json.loads(metadata.get(SUMMARY_META, b"null"))
        if not isinstance(summary, dict):
            return None
        return HourRows(table_rows(table), metadata.get(SENSITIVE_META) == b"1", summary)

    def write(self, stream: StreamKey, partition_start: int, rolled: HourRows, key: str) -> Path:
        metadata = {
            SENSITIVE_META: b"1" if rolled.sensitive else b"0",
            SUMMARY_META: json.dumps(rolled.summary).encode(),
        }
        return self.write_table(stream, partition_start, rows_table(rolled.rows).replace_schema_metadata(metadata), key)

    def remove_except(self, stream: StreamKey, keep: set[int]) -> int:
        """Delete the rollups of a stream whose partition is not in `keep` (e.g. removed by retention)."""
        removed = 0
        for start, path in self.layout.rollup_files(stream, self.kind):
            if start not in keep:
                path.unlink(missing_ok=True)
                removed += 1
        return removed


@dataclass(slots=True)
class _Catalog:
    """The catalog files and hot ticks a range of rollups of one trade stream depends on."""

    engine: QueryEngine
    trades: StreamKey
    lookback_ns: int
    trade_files: dict[int, list[ArchiveFile]]
    quote_files: dict[int, list[ArchiveFile]]
    archived: dict[StreamKey, int]
    hot: dict[StreamKey, HotSnapshot] = field(default_factory=dict)

    @classmethod
    def of(cls, engine: QueryEngine, trades: StreamKey, lookback_ns: int, start: int, end: int) -> _Catalog:
        quotes = StreamKey(trades.contract_id, TickType.BID_ASK)
        pn = engine.layout.partition_ns
        return cls(
            engine,
            trades,
            lookback_ns,
            by_partition(engine.index.plan(trades, start, end)),
            by_partition(engine.index.plan(quotes, start - pn, end)),
            engine.index.archived_seqs(),
        )

    def empty(self, partition_start: int) -> bool:
        """Whether the partition holds no archived ticks of either stream."""
        return partition_start not in self.trade_files and partition_start not in self.quote_files

    def key(self, partition_start: int) -> str:
        pn = self.engine.layout.partition_ns
        parts: list[Any] = [ROLLUP_VERSION, self.lookback_ns, pn]
        for files in (
            self.trade_files.get(partition_start, []),
            self.quote_files.get(partition_start - pn, []) if self.lookback_ns > 0 else [],
            self.quote_files.get(partition_start, []),
        ):
            parts.append(sorted((f.file_path, f.checksum) for f in files))
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def partitions(self, first: int, end: int, context_ns: int) -> list[int]:
        """The partitions of [first, end) whose rows can be non-empty: those with archive files of the trades
        (or quotes, or quotes of the partition before: the lookback), those the hot tier reaches, and the
        context's — never one per hour of a long empty range."""
        pn = self.engine.layout.partition_ns
        found = set(self.trade_files) | set(self.quote_files) | {q + pn for q in self.quote_files}
        found.add(context_ns - context_ns % pn)
        for stream in (self.trades, StreamKey(self.trades.contract_id, TickType.BID_ASK)):
            if stream not in self.hot:
                self.hot[stream] = self.engine.hot.snapshot(stream)
            held = self.hot[stream].select(first - self.lookback_ns, end, stream.tick_type)
            if held.num_rows:
                ts = pc.cast(held.column("ts"), pa.int64())
                lo, hi = pc.min(ts).as_py(), pc.max(ts).as_py() + self.lookback_ns
                found.update(range(lo - lo % pn, hi + 1, pn))
        return sorted(p for p in found if first <= p < end)

    def hot_in(self, partition_start: int) -> bool:
        """Whether the hot tier holds unarchived ticks the partition's rows depend on (the catalog does not
        describe them yet)."""
        end = partition_start + self.engine.layout.partition_ns
        archived = self.archived
        for stream in (self.trades, StreamKey(self.trades.contract_id, TickType.BID_ASK)):
            if stream not in self.hot:
                self.hot[stream] = self.engine.hot.snapshot(stream)
            held = self.hot[stream].select(partition_start - self.lookback_ns, end, stream.tick_type)
            if held.num_rows and pc.max(held.column("seq")).as_py() > archived.get(stream, -1):
                return True
        return False


def read_hour_rows(
    engine: QueryEngine,
    trades: StreamKey,
    hour_start: int,
    end_ns: int,
    lookback_ns: int,
    context_ns: int | None = None,
    carry: Carry | None = None,
) -> HourRows:
    """The rows of [hour_start, end_ns) computed from the ticks (see `analytics.rows.hour_rows`)."""
    context = hour_start if context_ns is None else context_ns
    trade_table = engine.read_stream(trades, context, end_ns, ["ts", "price", "size", "side"])
    quotes = engine.read_stream(
        StreamKey(trades.contract_id, TickType.BID_ASK),
        min(context - lookback_ns, hour_start),
        end_ns,
        ["ts", "bid_price", "bid_size", "ask_price", "ask_size"],
    )
    return hour_rows(trade_table, quotes, hour_start, lookback_ns, context_ns, carry)


def load_rows(
    engine: QueryEngine,
    trades: StreamKey,
    context_ns: int,
    from_ns: int,
    end_ns: int,
    lookback_ns: int = DEFAULT_LOOKBACK_NS,
    store: RollupStore | None = None,
    require_stored: bool = True,
) -> Rows | None:
    """Rows of the partitions covering [min(from_ns, context_ns), end_ns) with trades classified from context_ns.

    Stored rollups serve the partitions they are valid for; the others (and sensitive ones) are computed from
    their ticks. None (with `require_stored`) when no stored rollup serves any partition: the tick path is
    then as fast.
    """
    store = store or RollupStore.for_engine(engine)
    if require_stored and not store.holds(trades):
        return None
    pn = engine.layout.partition_ns
    first = min(from_ns, context_ns)
    first -= first % pn
    catalog = _Catalog.of(engine, trades, lookback_ns, first, end_ns + (-end_ns) % pn)
    partitions = catalog.partitions(first, end_ns, context_ns)  # an empty hour adds no row and changes no carry
    if require_stored and not any(  # nothing stored serves the range: leave it to the tick path before any read
        not catalog.hot_in(start) and store.key(trades, start) == catalog.key(start)
        for start in partitions
        if not (start < context_ns < start + pn) and not catalog.empty(start)
    ):
        return None
    parts: list[Rows] = []
    used = 0
    carry: Carry | None = None
    quotes_from = context_ns - lookback_ns
    for start in partitions:
        budget.check()
        stop = min(start + pn, end_ns)
        args = (engine, trades, start, stop, lookback_ns)
        if start < context_ns < start + pn:  # the context's partition: classified from the context on
            rolled = read_hour_rows(*args, context_ns)
        elif catalog.empty(start) and not catalog.hot_in(start):
            rolled = EMPTY
        else:
            stored = None if catalog.hot_in(start) else store.read(trades, start, catalog.key(start))
            used += stored is not None
            if start <= context_ns or (stored is not None and not stored.sensitive):
                rolled = stored or read_hour_rows(*args)
            else:  # some side depends on the ticks before: classify with what they carry in
                rolled = read_hour_rows(*args, carry=carry or Carry())
        if start + pn > context_ns:
            carry = (carry or Carry()).after(rolled.summary, quotes_from)
        parts.append(rolled.rows)
    if require_stored and not used:
        return None
    return concat_rows(parts)


def update_rollups(
    engine: QueryEngine, contract_ids: Sequence[int] | None = None, lookback_ns: int = DEFAULT_LOOKBACK_NS
) -> int:
    """Write the missing and stale rollups of every closed partition of every trade stream; return how many.

    `engine` is the query engine of the store that writes the data root (e.g. `TickStore.engine`): its layout,
    catalog and clock are used. A partition is closed when its end is at or before now and its streams hold no
    unarchived ticks; the rest waits for a later run. Rollups of partitions that no longer exist are deleted.
    Idempotent.
    """
    rollups = RollupStore.for_engine(engine)
    pn = engine.layout.partition_ns
    now = engine.clock.now_ns()
    written = 0
    for stream in engine.index.streams():
        if stream.tick_type not in TRADE_STREAMS or (
            contract_ids is not None and stream.contract_id not in contract_ids
        ):
            continue
        quotes = StreamKey(stream.contract_id, TickType.BID_ASK)
        catalog = _Catalog(
            engine,
            stream,
            lookback_ns,
            by_partition(engine.index.files(stream)),
            by_partition(engine.index.files(quotes)),
            engine.index.archived_seqs(),
        )
        partitions = set(catalog.trade_files) | set(catalog.quote_files)
        for start in sorted(partitions):
            if start + pn > now or catalog.hot_in(start):
                continue
            key = catalog.key(start)
            if rollups.key(stream, start) == key:
                continue
            rolled = read_hour_rows(engine, stream, start, start + pn, lookback_ns)
            rollups.write(stream, start, rolled, key)
            written += 1
        rollups.remove_except(stream, partitions)
    return written


def by_partition(files: list[ArchiveFile]) -> dict[int, list[ArchiveFile]]:
    """Archive files grouped by the partition they belong to."""
    grouped: dict[int, list[ArchiveFile]] = defaultdict(list)
    for f in files:
        grouped[f.partition_start].append(f)
    return dict(grouped)
