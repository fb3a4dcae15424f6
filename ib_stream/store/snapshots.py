"""Storage: L2 book snapshots at partition boundaries, their writer, and `book_at` = latest valid snapshot + deltas.

A snapshot at boundary B (an archive partition boundary, i.e. an hour) is the book of a contract's
`depth` stream after every depth tick with ts < B. The book at an instant T (every tick with
ts <= T applied) is the latest valid snapshot at B <= T plus the ticks with B <= ts <= T; the
writer keeps a snapshot at the end of every partition holding depth, so at most one partition of
deltas is replayed.

On disk (`Layout.snapshot_path`): `<data_root>/snapshots/contract_id=<id>/date=<YYYY-MM-DD>/
hour=<HH>.seq=<built_seq>.json` — in the data root wherever the catalog is — written atomically (temp → fsync
→ rename → fsync dir). Readers and the writer find them through the query engine's layout.

Validity — late data. `built_seq` is the highest seq among the ticks the snapshot was built from
(ts < B). Seqs only grow, so a tick that lands later with ts < B (IB backfill, an import of old
data) has a higher seq: a snapshot is stale exactly when the stream now holds a tick with ts < B
and seq > built_seq. The catalog answers that without reading data (archive files never straddle
a partition boundary, so a file with start_time < B holds only ticks before B: its last_seq
counts), and the hot tier holds the rest. This check is durable and works across processes
(a read-only engine sees the writer's late data), which an in-memory change tracker cannot. A
stale snapshot is skipped by readers (an earlier valid one, or a full replay, is used instead)
and rebuilt by the next `SnapshotWriter.update()`, together with every later stale one.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ib_stream import budget
from ib_stream.analytics.book import Level, OrderBook
from ib_stream.clock import NS_PER_SECOND, Clock
from ib_stream.domain import MIN_TS_NS, StreamKey, TickType
from ib_stream.errors import StorageError, ValidationError
from ib_stream.store.layout import DAY_NS, TEMP_MARK, Layout, fsync_dir, temp_path
from ib_stream.store.query import QueryEngine
from ib_stream.times import TimeLike, iso_us, to_utc_ns

log = logging.getLogger(__name__)
FORMAT_VERSION: Final = 1
DEFAULT_GRACE_SECONDS: Final = 60
_REPLAY_CHUNK_NS: Final = DAY_NS  # a full replay reads this much at a time


@dataclass(frozen=True, slots=True, order=True)
class SnapshotEntry:
    """A snapshot file found on disk (not yet read)."""

    boundary_ns: int
    built_seq: int
    path: Path = field(compare=False)


@dataclass(slots=True)
class Snapshot:
    """A contract's book at `boundary_ns`, built from its depth ticks with ts < boundary_ns up to seq `built_seq`."""

    contract_id: int
    boundary_ns: int
    built_seq: int
    book: OrderBook
    base_ns: int | None = None  # the boundary of the snapshot it was built from (None: from the first tick)
    deltas: int = 0  # depth ticks applied on top of the base
    built_at_ns: int = 0

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "format": FORMAT_VERSION,
                "contract_id": self.contract_id,
                "tick_type": TickType.DEPTH.value,
                "boundary": iso_us(self.boundary_ns),
                "boundary_ns": self.boundary_ns,
                "built_seq": self.built_seq,
                "base_ns": self.base_ns,
                "deltas": self.deltas,
                "built_at_ns": self.built_at_ns,
                "book": self.book.to_dict(),
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> Snapshot:
        """Parse a snapshot file's bytes; raise ValueError when they are not one."""
        try:
            doc = orjson.loads(data)
            if doc["format"] != FORMAT_VERSION:
                raise ValueError(f"snapshot format {doc['format']!r} is not {FORMAT_VERSION}")
            return cls(
                int(doc["contract_id"]),
                int(doc["boundary_ns"]),
                int(doc["built_seq"]),
                OrderBook.from_dict(doc["book"]),
                None if doc["base_ns"] is None else int(doc["base_ns"]),
                int(doc["deltas"]),
                int(doc["built_at_ns"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"not a book snapshot: {e!r}") from e


class SnapshotStore:
    """The snapshot files of one data root (where its layout puts them): list, read, write atomically, remove."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.corrupt = 0  # unreadable snapshot files met (each is skipped, then rebuilt by the writer)

    def entries(self, contract_id: int, until_ns: int | None = None) -> list[SnapshotEntry]:
        """Snapshots of a contract with boundary <= until_ns, oldest first (the highest built_seq per boundary)."""
        found = [e for day, d in self.layout.snapshot_dates(contract_id) for e in self._files(d, day)]
        return _newest_per_boundary(e for e in found if until_ns is None or e.boundary_ns <= until_ns)

    def latest_first(self, contract_id: int, at_ns: int) -> Iterator[SnapshotEntry]:
        """Snapshots of a contract with boundary <= at_ns, newest first, listing one date directory at a time."""
        for day_ns, directory in reversed(self.layout.snapshot_dates(contract_id)):
            if day_ns > at_ns:
                continue
            yield from reversed(
                _newest_per_boundary(e for e in self._files(directory, day_ns) if e.boundary_ns <= at_ns)
            )

    def load(self, contract_id: int, entry: SnapshotEntry) -> Snapshot | None:
        """Read a snapshot; None (logged, counted) when the file is unreadable or not what its name says."""
        try:
            snapshot = Snapshot.from_json(entry.path.read_bytes())
            if (snapshot.contract_id, snapshot.boundary_ns, snapshot.built_seq) != (
                contract_id,
                entry.boundary_ns,
                entry.built_seq,
            ):
                raise ValueError("its contents do not match its name")
        except FileNotFoundError:  # replaced by a newer build since it was listed
            return None
        except (OSError, ValueError) as e:
            self.corrupt += 1
            log.warning("book snapshot %s is unreadable and is ignored: %s", entry.path, e)
            return None
        return snapshot

    def save(self, snapshot: Snapshot) -> Path:
        """Write a snapshot atomically, then remove older files of the same boundary."""
        final = self.layout.snapshot_path(snapshot.contract_id, snapshot.boundary_ns, snapshot.built_seq)
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = temp_path(final)
        try:
            with open(temp, "wb") as handle:
                handle.write(snapshot.to_json())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, final)
            fsync_dir(final.parent)
            for old in self._files(final.parent, snapshot.boundary_ns - snapshot.boundary_ns % DAY_NS):
                if old.boundary_ns == snapshot.boundary_ns and old.path != final:
                    old.path.unlink(missing_ok=True)
        except OSError as e:
            temp.unlink(missing_ok=True)  # a full disk keeps no half-written snapshot
            raise StorageError(f"book snapshot {final} cannot be written: {e}", details={"path": str(final)}) from e
        return final

    def remove_before(self, contract_id: int, before_ns: int) -> int:
        """Delete the snapshots of a contract with boundary < before_ns but the latest of them (retention).

        The latest one is kept as the base of later rebuilds: the ticks before it may be gone.
        """
        old = [e for e in self.entries(contract_id) if e.boundary_ns < before_ns][:-1]
        for entry in old:
            entry.path.unlink(missing_ok=True)
        for day_ns, directory in self.layout.snapshot_dates(contract_id):
            if day_ns + DAY_NS <= before_ns and not any(directory.iterdir()):
                directory.rmdir()
        return len(old)

    def remove_temp_files(self, contract_id: int) -> int:
        """Delete temp files left by an interrupted write."""
        directory = self.layout.snapshot_contract_dir(contract_id)
        temps = [p for p in directory.rglob(f"*{TEMP_MARK}*") if p.is_file()] if directory.is_dir() else []
        for path in temps:
            path.unlink(missing_ok=True)
        return len(temps)

    @staticmethod
    def _files(directory: Path, day_ns: int) -> list[SnapshotEntry]:
        return [SnapshotEntry(b, s, p) for b, s, p in Layout.snapshot_files(directory, day_ns)]


class SeqWatermark:
    """For any boundary B: the highest seq of the stream's ticks with ts < B, from the catalog and the hot tier."""

    def __init__(self, engine: QueryEngine, stream: StreamKey, until_ns: int) -> None:
        files = engine.index.plan(stream, MIN_TS_NS, until_ns)
        hot = engine.hot.snapshot(stream).select(MIN_TS_NS, until_ns, stream.tick_type)
        ts = np.concatenate(
            [np.array([f.start_time for f in files], dtype=np.int64), pc.cast(hot.column("ts"), pa.int64()).to_numpy()]
        )
        seq = np.concatenate([np.array([f.last_seq for f in files], dtype=np.int64), hot.column("seq").to_numpy()])
        order = np.argsort(ts, kind="stable")
        self.ts = ts[order]
        self.max_seq = np.maximum.accumulate(seq[order]) if len(seq) else seq

    def before(self, boundary_ns: int) -> int:
        """Highest seq among the ticks with ts < boundary_ns (0 when none)."""
        i = int(np.searchsorted(self.ts, boundary_ns, side="left"))
        return int(self.max_seq[i - 1]) if i else 0

    def chunks(self, chunk_ns: int, end_ns: int) -> list[int]:
        """The starts of the chunk_ns-aligned chunks before end_ns that hold ticks (a chunk is a whole number of
        partitions, so a file lies in the chunk of its start)."""
        starts = np.unique(self.ts - self.ts % chunk_ns)
        return [int(s) for s in starts if s < end_ns]

    def boundaries(self, partition_ns: int, closed_until_ns: int) -> list[int]:
        """The ends of the partitions holding ticks, up to closed_until_ns."""
        ends = np.unique(self.ts - self.ts % partition_ns + partition_ns)
        return [int(b) for b in ends if b <= closed_until_ns]

    def is_valid(self, entry: SnapshotEntry) -> bool:
        return self.before(entry.boundary_ns) <= entry.built_seq


@dataclass(slots=True)
class SnapshotReport:
    """What one `SnapshotWriter.update` did."""

    streams: int = 0
    written: int = 0
    rebuilt: int = 0  # of `written`: replacing a stale or unreadable snapshot
    deltas_replayed: int = 0
    seconds: float = 0.0


class SnapshotWriter:
    """Writes the missing and stale book snapshots of every depth stream (a plain, idempotent job)."""

    def __init__(
        self,
        engine: QueryEngine,
        snapshots: SnapshotStore,
        partition_ns: int,
        clock: Clock,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        self.engine = engine
        self.snapshots = snapshots
        self.partition_ns = partition_ns
        self.clock = clock
        self.grace_ns = int(grace_seconds * NS_PER_SECOND)

    @classmethod
    def for_engine(cls, engine: QueryEngine, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> SnapshotWriter:
        """The writer of the data root the engine reads (its layout, partitions and clock), e.g. a TickStore's."""
        return cls(engine, SnapshotStore(engine.layout), engine.layout.partition_ns, engine.clock, grace_seconds)

    def update(self, contract_ids: list[int] | None = None) -> SnapshotReport:
        """Write a snapshot at the end of every closed partition holding depth where none is valid yet."""
        started = time.perf_counter()
        report = SnapshotReport()
        now = self.clock.now_ns() - self.grace_ns
        closed_until = now - now % self.partition_ns
        streams = set(self.engine.index.streams()) | set(self.engine.layout.buffered_streams())
        for stream in sorted(streams):
            if stream.tick_type is TickType.DEPTH and (contract_ids is None or stream.contract_id in contract_ids):
                report.streams += 1
                self._update_stream(stream, closed_until, report)
        report.seconds = time.perf_counter() - started
        return report

    def remove_before(self, before_ns: int) -> int:
        """Retention: delete every contract's snapshots older than before_ns but its latest such one (and temp files
        left by an interrupted write)."""
        removed = 0
        for contract_id in self.snapshots.layout.snapshot_contracts():
            self.snapshots.remove_temp_files(contract_id)
            removed += self.snapshots.remove_before(contract_id, before_ns)
        return removed

    def _update_stream(self, stream: StreamKey, closed_until: int, report: SnapshotReport) -> None:
        watermark = SeqWatermark(self.engine, stream, closed_until)
        needed = watermark.boundaries(self.partition_ns, closed_until)
        existing = {e.boundary_ns: e for e in self.snapshots.entries(stream.contract_id, closed_until)}
        valid = [b in existing and watermark.is_valid(existing[b]) for b in needed]
        if all(valid):
            return
        first_bad = needed[valid.index(False)]
        # Base: the latest readable valid snapshot before the first bad one (any boundary, e.g. one kept by
        # retention whose ticks are gone), else an empty book before the first tick.
        book, base_ns, base_seq = OrderBook(), None, 0
        for boundary in sorted((b for b in existing if b < first_bad), reverse=True):
            if watermark.is_valid(existing[boundary]):
                loaded = self.snapshots.load(stream.contract_id, existing[boundary])
                if loaded is not None:
                    book, base_ns, base_seq = loaded.book, boundary, loaded.built_seq
                    break
        for boundary, is_valid in zip(needed, valid, strict=True):
            if base_ns is not None and boundary <= base_ns:
                continue
            if is_valid:
                loaded = self.snapshots.load(stream.contract_id, existing[boundary])
                if loaded is not None:
                    book, base_ns, base_seq = loaded.book, boundary, loaded.built_seq
                    continue
            deltas = self.engine.read_stream(stream, MIN_TS_NS if base_ns is None else base_ns, boundary)
            book.apply_table(deltas)
            built_seq = max(base_seq, pc.max(deltas.column("seq")).as_py()) if deltas.num_rows else base_seq
            snapshot = Snapshot(
                stream.contract_id, boundary, built_seq, book, base_ns, deltas.num_rows, self.clock.now_ns()
            )
            self.snapshots.save(snapshot)
            report.written += 1
            report.rebuilt += boundary in existing
            report.deltas_replayed += deltas.num_rows
            base_ns, base_seq = boundary, built_seq


@dataclass(frozen=True, slots=True)
class BookAt:
    """The book of a contract at `at_ns` (every depth tick with ts <= at_ns applied) and how it was rebuilt."""

    contract_id: int
    at_ns: int
    book: OrderBook
    snapshot: SnapshotEntry | None  # the snapshot replayed from (None: a full replay from the first tick)
    deltas_replayed: int
    depth: int | None = None  # levels per side shown by bids / asks / cumulative (None: all)

    @property
    def bids(self) -> list[Level]:
        return self.book.levels(self.depth)[0]

    @property
    def asks(self) -> list[Level]:
        return self.book.levels(self.depth)[1]

    def cumulative(self) -> tuple[list[Level], list[Level]]:
        return self.book.cumulative(self.depth)


def book_at(engine: QueryEngine, contract_id: int, at: TimeLike | None = None, levels: int | None = None) -> BookAt:
    """The L2 book of `contract_id` at `at` (default now): the latest valid snapshot <= at plus the deltas after it.

    The snapshots are those of the engine's data root (its layout says where). `at` is UTC ns or any
    time `StorageQuery` accepts. Blocking: run it in an executor from async code.
    """
    at_ns = engine.clock.now_ns() if at is None else to_utc_ns(at, "at")
    if levels is not None and (isinstance(levels, bool) or not isinstance(levels, int) or levels < 1):
        raise ValidationError("levels", levels, "must be a positive integer")
    stream = StreamKey(int(contract_id), TickType.DEPTH)
    end = at_ns + 1
    snapshots = SnapshotStore(engine.layout)
    watermark = SeqWatermark(engine, stream, end)
    for entry in snapshots.latest_first(stream.contract_id, at_ns):
        if not watermark.is_valid(entry):
            continue
        loaded = snapshots.load(stream.contract_id, entry)
        if loaded is None:
            continue
        deltas = engine.read_stream(stream, entry.boundary_ns, end)
        loaded.book.apply_table(deltas)
        return BookAt(stream.contract_id, at_ns, loaded.book, entry, deltas.num_rows, levels)
    book, replayed = OrderBook(), 0
    for lo in watermark.chunks(_REPLAY_CHUNK_NS, end):  # only those holding ticks: a far `at` costs nothing more
        budget.check()
        replayed += book.apply_table(engine.read_stream(stream, lo, min(lo + _REPLAY_CHUNK_NS, end)))
    return BookAt(stream.contract_id, at_ns, book, None, replayed, levels)


def _newest_per_boundary(entries: Iterator[SnapshotEntry] | list[SnapshotEntry]) -> list[SnapshotEntry]:
    best: dict[int, SnapshotEntry] = {}
    for entry in entries:
        if entry.boundary_ns not in best or entry.built_seq > best[entry.boundary_ns].built_seq:
            best[entry.boundary_ns] = entry
    return sorted(best.values())


__all__ = ["BookAt", "SeqWatermark", "Snapshot", "SnapshotReport", "SnapshotStore", "SnapshotWriter", "book_at"]
