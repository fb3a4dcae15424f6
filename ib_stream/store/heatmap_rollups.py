"""Storage: per-second resting-size sums of depth per (contract, partition) — the heatmap's rollups, so a long
window's liquidity heatmap reads a few hundred thousand (second, price) sums per hour instead of walking every
depth update.

A heatmap rollup (`Layout.rollup_path(<depth stream>, partition, kind="resting")`, beside the depth rollups)
holds, for each whole second of one closed partition and each stored price, Σ resting size × duration (ns) of
the bids and of the asks — only the nonzero ones, sorted by second: `analytics.heatmap.second_sums` of the
resting intervals (`analytics.resting.resting_intervals`, every level) of the partition walked from the book at
its start (`snapshots.book_at`), the very walk of the heatmap. Its validity key is the depth rollups' (the
partition's (file, checksum) list and the seq watermark of the depth ticks before it, `DepthCatalog.key`) under
its own version: late data, compaction and retention make it stale, and a partition whose depth still has
unarchived ticks is never served. A stale rollup is bypassed (that part of the window is walked), never served.

`served_sums` gives the heatmap the sums of the whole seconds of [start, end) that valid rollups hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa

from ib_stream import budget
from ib_stream.analytics.heatmap import SECOND_NS, SecondSums, second_sums
from ib_stream.analytics.resting import resting_intervals
from ib_stream.domain import StreamKey, TickType
from ib_stream.store.depth_rollups import DepthCatalog, update_partition_rollups
from ib_stream.store.layout import RESTING_KIND
from ib_stream.store.query import QueryEngine
from ib_stream.store.rollups import RollupStore
from ib_stream.store.snapshots import book_at

KIND: Final = RESTING_KIND
VERSION: Final = "resting-1"
DEPTH_COLUMNS: Final = ("ts", "seq", "side", "position", "operation", "price", "size", "by_price")
SCHEMA: Final = pa.schema(
    [("second", pa.int64()), ("is_ask", pa.bool_()), ("price", pa.float64()), ("weight", pa.float64())]
)


@dataclass(frozen=True, slots=True)
class Served:
    """The sums of the whole seconds of [lo_ns, hi_ns) read from the rollup of one partition."""

    lo_ns: int
    hi_ns: int
    sums: SecondSums


def partition_sums(engine: QueryEngine, contract_id: int, start_ns: int, end_ns: int) -> SecondSums:
    """The per-second resting sums of [start_ns, end_ns): the book at start_ns, then the depth ticks after it."""
    start = book_at(engine, contract_id, start_ns)
    deltas = engine.read_stream(StreamKey(contract_id, TickType.DEPTH), start_ns + 1, end_ns, DEPTH_COLUMNS)
    return second_sums(resting_intervals(start.book, deltas, start_ns, end_ns))


def _table(sums: SecondSums) -> pa.Table:
    columns = (sums.second, sums.is_ask, sums.price, sums.weight)
    return pa.table([pa.array(c, f.type) for c, f in zip(columns, SCHEMA, strict=True)], schema=SCHEMA)


def _sums(table: pa.Table) -> SecondSums:
    second, is_ask, price, weight = (table.column(f.name).to_numpy(zero_copy_only=False) for f in SCHEMA)
    return SecondSums(second, is_ask, price, weight)


def _catalog(engine: QueryEngine, stream: StreamKey, first: int, last: int, until_ns: int) -> DepthCatalog:
    return DepthCatalog.of(engine, stream, 0, engine.index.plan(stream, first, last), until_ns)


def served_sums(engine: QueryEngine, contract_id: int, start_ns: int, end_ns: int) -> list[Served]:
    """The per-second sums of the whole seconds of [start_ns, end_ns) (start_ns a whole second) held by valid
    rollups, one entry per partition served; the rest of the window is for the walk."""
    if start_ns % SECOND_NS:
        raise ValueError(f"start {start_ns} is not a whole second")
    stream = StreamKey(contract_id, TickType.DEPTH)
    store = RollupStore.for_engine(engine, KIND)
    if not store.holds(stream):
        return []
    pn = engine.layout.partition_ns
    first = start_ns - start_ns % pn
    last = end_ns + (-end_ns) % pn  # whole partitions: a rollup's key lists all of its partition's files
    catalog = _catalog(engine, stream, first, last, end_ns)
    out = []
    for partition in sorted(p for p in catalog.files if first <= p < end_ns):
        budget.check()
        lo, hi = max(partition, start_ns), min(partition + pn, end_ns)
        hi -= hi % SECOND_NS
        if hi <= lo or catalog.hot_in(partition):
            continue
        table = store.read_table(stream, partition, catalog.key(partition, VERSION), SCHEMA)
        if table is not None:
            out.append(Served(lo, hi, _sums(table).between(lo, hi)))
    return out


def update_heatmap_rollups(engine: QueryEngine, contract_ids: Sequence[int] | None = None) -> int:
    """Write the missing and stale heatmap rollups of every closed partition of every depth stream; return how
    many. As `depth_rollups.update_depth_rollups`: closed = ended at or before now with no unarchived depth
    ticks; rollups of partitions that no longer hold depth are deleted. Idempotent."""

    def build(stream: StreamKey, start: int, end: int) -> pa.Table:
        return _table(partition_sums(engine, stream.contract_id, start, end))

    return update_partition_rollups(engine, RollupStore.for_engine(engine, KIND), contract_ids, 0, VERSION, build)


def sums_range(sums: Sequence[SecondSums]) -> tuple[float, float] | None:
    """The lowest and highest price of some sums (None: no sums)."""
    held = [s.price for s in sums if len(s)]
    if not held:
        return None
    return float(min(np.min(p) for p in held)), float(max(np.max(p) for p in held))
