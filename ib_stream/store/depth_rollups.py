"""Storage: 1-second OBI-from-depth rollups per (contract, partition), so OBI bars from the L2 book over long
ranges do not replay every depth tick.

A depth rollup (`Layout.rollup_path` of the contract's `depth` stream) holds `analytics.rows.depth_rows` of
the top-`levels` volumes after each book update of one closed partition, replayed from the book at the partition
start (`snapshots.book_at`), and in its metadata the imbalance of that opening book. Its validity key hashes the
format, the levels, the partition length, the (file, checksum) list of the partition's depth files and the seq
watermark of the depth ticks before the partition: a late tick inside the partition changes its files, one
before it changes the opening book and raises the watermark (seqs only grow). A partition whose depth still has
unarchived ticks is never served from a rollup. So a stale rollup is bypassed, never served.

`depth_obi_rows` gives the service the rows of [start, end) and the OBI in force at start: stored rollups where
valid, the book replay elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ib_stream import budget
from ib_stream.analytics.book import top_volumes
from ib_stream.analytics.obi import imbalance
from ib_stream.analytics.request import DEFAULT_LEVELS
from ib_stream.analytics.rows import DEPTH_ROLLUP_SCHEMA, Rows, concat_rows, depth_rows
from ib_stream.domain import StreamKey, TickType
from ib_stream.store.hotcache import HotSnapshot
from ib_stream.store.index import ArchiveFile
from ib_stream.store.query import QueryEngine
from ib_stream.store.rollups import RollupStore, by_partition
from ib_stream.store.snapshots import SeqWatermark, book_at

DEPTH_ROLLUP_VERSION: Final = 2  # 2: OBI per book update
OPEN_META: Final = b"ib_stream.depth_rollup.open_obi"


@dataclass(frozen=True, slots=True)
class DepthRows:
    """The per-second OBI rows of a span of depth ticks and the imbalance of the book before it (NaN: no volume)."""

    rows: Rows
    open_obi: float


def span_rows(engine: QueryEngine, stream: StreamKey, start_ns: int, end_ns: int, levels: int) -> DepthRows:
    """The rows of the depth ticks in [start_ns, end_ns), replayed from the book before start_ns."""
    book = book_at(engine, stream.contract_id, start_ns - 1).book
    volumes = top_volumes(engine.read_stream(stream, start_ns, end_ns), levels, start_book=book)
    bid, ask = book.top_volumes(levels)
    return DepthRows(depth_rows(volumes), float(imbalance(np.array([bid]), np.array([ask]))[0]))


def _table(rolled: DepthRows) -> pa.Table:
    arrays = {f.name: pa.array(rolled.rows[f.name], f.type) for f in DEPTH_ROLLUP_SCHEMA}
    table = pa.table(arrays, schema=DEPTH_ROLLUP_SCHEMA)
    return table.replace_schema_metadata({OPEN_META: json.dumps(rolled.open_obi).encode()})


def _rolled(table: pa.Table) -> DepthRows | None:
    try:
        open_obi = float(json.loads((table.schema.metadata or {}).get(OPEN_META, b"null")))
    except (TypeError, ValueError):
        return None
    return DepthRows({f.name: table.column(f.name).to_numpy() for f in DEPTH_ROLLUP_SCHEMA}, open_obi)


@dataclass(slots=True)
class DepthCatalog:
    """What the depth rollups of one stream depend on: its archive files, seq watermark and hot ticks."""

    engine: QueryEngine
    stream: StreamKey
    levels: int
    files: dict[int, list[ArchiveFile]]
    watermark: SeqWatermark
    archived_seq: int
    hot: HotSnapshot

    @classmethod
    def of(
        cls, engine: QueryEngine, stream: StreamKey, levels: int, files: list[ArchiveFile], until_ns: int
    ) -> DepthCatalog:
        archived = engine.index.archived_seqs().get(stream, -1)
        watermark = SeqWatermark(engine, stream, until_ns)
        return cls(engine, stream, levels, by_partition(files), watermark, archived, engine.hot.snapshot(stream))

    def key(self, partition_start: int, version: int | str = DEPTH_ROLLUP_VERSION) -> str:
        """The validity key of a rollup of the partition (`version`: the rollup's kind and format)."""
        files = sorted((f.file_path, f.checksum) for f in self.files.get(partition_start, []))
        before = self.watermark.before(partition_start)  # the opening book is that of the ticks up to this seq
        parts = [version, self.levels, self.engine.layout.partition_ns, files, before]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def hot_in(self, partition_start: int) -> bool:
        """Whether the hot tier holds unarchived depth ticks of the partition (the catalog does not list them)."""
        end = partition_start + self.engine.layout.partition_ns
        held = self.hot.select(partition_start, end, TickType.DEPTH)
        return bool(held.num_rows) and pc.max(held.column("seq")).as_py() > self.archived_seq

    def partitions(self, first: int, end: int) -> list[int]:
        """The partitions of [first, end) that can hold rows: the first (its opening book), those with archive
        files and those the hot tier reaches — never one per hour of a long empty range."""
        pn = self.engine.layout.partition_ns
        found = {first, *self.files}
        held = self.hot.select(first, end, TickType.DEPTH)
        if held.num_rows:
            ts = pc.cast(held.column("ts"), pa.int64())
            lo, hi = pc.min(ts).as_py(), pc.max(ts).as_py()
            found.update(range(lo - lo % pn, hi + 1, pn))
        return sorted(p for p in found if first <= p < end)


def depth_obi_rows(
    engine: QueryEngine,
    contract_id: int,
    start_ns: int,
    end_ns: int,
    levels: int,
    store: RollupStore | None = None,
) -> tuple[Rows, float] | None:
    """(rows of the depth ticks in [start_ns, end_ns), OBI in force at start_ns) — the in-force value is NaN when
    the book then has no volume. Stored rollups serve the partitions they are valid for, the book replay the
    rest. None when no stored rollup serves any partition (the replay is then as fast), for other levels than
    the rollups hold, and when the range has no depth event and no volume in force: whether the contract has
    depth at all is then the tick path's call."""
    if levels != DEFAULT_LEVELS:
        return None
    stream = StreamKey(contract_id, TickType.DEPTH)
    pn = engine.layout.partition_ns
    first = start_ns - start_ns % pn
    last = end_ns + (-end_ns) % pn  # whole partitions: a rollup's key lists all of its partition's files
    catalog = DepthCatalog.of(engine, stream, levels, engine.index.plan(stream, first, last), end_ns)
    store = store or RollupStore.for_engine(engine)
    parts: list[Rows] = []
    used = 0
    in_force = math.nan
    for partition in catalog.partitions(first, end_ns):
        budget.check()
        lo, hi = max(partition, start_ns), min(partition + pn, end_ns)
        hot = catalog.hot_in(partition)
        table = None
        if partition in catalog.files and not hot:
            table = store.read_table(stream, partition, catalog.key(partition), DEPTH_ROLLUP_SCHEMA)
        stored = _rolled(table) if table is not None else None
        if stored is not None:
            used += 1
            a, b = np.searchsorted(stored.rows["second"], [lo, hi])
            if partition == first:
                in_force = float(stored.rows["obi_end"][a - 1]) if a else stored.open_obi
            parts.append({name: values[a:b] for name, values in stored.rows.items()})
        elif partition in catalog.files or hot or partition == first:
            computed = span_rows(engine, stream, lo, hi, levels)
            if partition == first:
                in_force = computed.open_obi
            parts.append(computed.rows)
        # else: no depth tick in the partition, no rows
    rows = concat_rows(parts, DEPTH_ROLLUP_SCHEMA)
    if not used or (math.isnan(in_force) and not rows["events"].sum()):
        return None
    return rows, in_force


def update_depth_rollups(engine: QueryEngine, contract_ids: Sequence[int] | None = None) -> int:
    """Write the missing and stale depth rollups of every closed partition of every depth stream; return how many.

    `engine` is the query engine of the store that writes the data root (e.g. `TickStore.engine`). A partition
    is closed when its end is at or before now and it holds no unarchived depth ticks. Rollups of partitions that
    no longer hold depth are deleted. Idempotent.
    """

    def build(stream: StreamKey, start: int, end: int) -> pa.Table:
        return _table(span_rows(engine, stream, start, end, DEFAULT_LEVELS))

    return update_partition_rollups(
        engine, RollupStore.for_engine(engine), contract_ids, DEFAULT_LEVELS, DEPTH_ROLLUP_VERSION, build
    )


def update_partition_rollups(
    engine: QueryEngine,
    rollups: RollupStore,
    contract_ids: Sequence[int] | None,
    levels: int,
    version: int | str,
    build: Callable[[StreamKey, int, int], pa.Table],
) -> int:
    """Write with `build(stream, start, end)` the missing and stale rollups in `rollups` of every closed partition
    of every depth stream (of `contract_ids`, default all), keyed by `DepthCatalog.key(start, version)`; delete
    those of partitions that no longer hold depth; return how many were written. Closed: ended at or before now,
    with no unarchived depth ticks."""
    pn = engine.layout.partition_ns
    now = engine.clock.now_ns()
    written = 0
    for stream in engine.index.streams():
        if stream.tick_type is not TickType.DEPTH or (
            contract_ids is not None and stream.contract_id not in contract_ids
        ):
            continue
        catalog = DepthCatalog.of(engine, stream, levels, engine.index.files(stream), now)
        for start in sorted(catalog.files):
            if start + pn > now or catalog.hot_in(start):
                continue
            key = catalog.key(start, version)
            if rollups.key(stream, start) == key:
                continue
            rollups.write_table(stream, start, build(stream, start, start + pn), key)
            written += 1
        rollups.remove_except(stream, set(catalog.files))
    return written
