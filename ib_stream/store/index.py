"""The catalog (SQLite, WAL): archive files, stream watermarks, daily statistics, retired files.

Queries plan from here — never by listing directories. Times are UTC int64 ns; paths are
relative to the archive directory.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import astuple, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from ib_stream.domain import StreamKey, TickType
from ib_stream.store.sqlite_db import SqliteDatabase

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tick_archives (
    contract_id       INTEGER NOT NULL,
    tick_type         TEXT    NOT NULL,
    start_time        INTEGER NOT NULL,  -- min ts in the file, UTC ns
    end_time          INTEGER NOT NULL,  -- max ts in the file, UTC ns (inclusive)
    first_seq         INTEGER NOT NULL,
    last_seq          INTEGER NOT NULL,
    file_path         TEXT    NOT NULL PRIMARY KEY,  -- relative to the archive directory
    tick_count        INTEGER NOT NULL,
    file_size_bytes   INTEGER NOT NULL,
    jsonl_bytes       INTEGER NOT NULL,  -- bytes the same ticks took as JSON lines
    compression_ratio REAL    NOT NULL,  -- jsonl_bytes / file_size_bytes
    checksum          TEXT    NOT NULL,  -- sha256 of the file
    partition_start   INTEGER NOT NULL,  -- start of the archive partition, UTC ns
    kind              TEXT    NOT NULL,  -- 'part' (one segment) or 'compacted' (one per partition)
    created_at        TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_tick_archives_range
    ON tick_archives (contract_id, tick_type, start_time, end_time);
CREATE INDEX IF NOT EXISTS idx_tick_archives_partition
    ON tick_archives (contract_id, tick_type, partition_start);
CREATE TABLE IF NOT EXISTS data_statistics (
    contract_id   INTEGER NOT NULL,
    tick_type     TEXT    NOT NULL,
    date          TEXT    NOT NULL,  -- UTC date YYYY-MM-DD
    total_ticks   INTEGER NOT NULL,
    unique_prices INTEGER NOT NULL,
    total_volume  REAL,
    vwap          REAL,
    high_price    REAL,
    low_price     REAL,
    PRIMARY KEY (contract_id, tick_type, date)
);
CREATE TABLE IF NOT EXISTS stream_state (
    contract_id  INTEGER NOT NULL,
    tick_type    TEXT    NOT NULL,
    archived_seq INTEGER NOT NULL,  -- every tick with seq <= this is in the archive
    PRIMARY KEY (contract_id, tick_type)
);
CREATE TABLE IF NOT EXISTS retired_files (
    file_path  TEXT    NOT NULL PRIMARY KEY,  -- replaced by compaction or retention, to delete
    retired_at INTEGER NOT NULL              -- UTC ns
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class ArchiveFile:
    """One row of `tick_archives`."""

    contract_id: int
    tick_type: str
    start_time: int
    end_time: int
    first_seq: int
    last_seq: int
    file_path: str
    tick_count: int
    file_size_bytes: int
    jsonl_bytes: int
    compression_ratio: float
    checksum: str
    partition_start: int
    kind: str
    created_at: str

    @property
    def stream(self) -> StreamKey:
        return StreamKey(self.contract_id, TickType(self.tick_type))


@dataclass(frozen=True, slots=True)
class DailyStatistics:
    """One row of `data_statistics`."""

    contract_id: int
    tick_type: str
    date: str
    total_ticks: int
    unique_prices: int
    total_volume: float | None
    vwap: float | None
    high_price: float | None
    low_price: float | None


_FILE_COLUMNS = ", ".join(f.name for f in fields(ArchiveFile))
_FILE_PLACEHOLDERS = ", ".join("?" for _ in fields(ArchiveFile))


class ReaderRegistry:
    """Readers in flight, so files retired by compaction or retention are deleted only when none can need them.

    Readers and retirements are ordered by an epoch taken *after* each retirement's catalog commit:
    a reader that registered before a retirement committed may have planned from the old catalog and
    still read the retired file; a reader that registered after it cannot. (Clock values cannot
    order these: the retirement time is read before its commit.)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._epoch = 0
        self._active: dict[int, int] = {}  # reader id -> epoch at registration
        self._retired_epoch: dict[str, int] = {}  # file -> epoch right after its retirement committed

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        with self._lock:
            reader = next(self._ids)
            self._active[reader] = self._epoch
        try:
            yield
        finally:
            with self._lock:
                del self._active[reader]

    def retired(self, paths: Iterable[str]) -> None:
        """Note files whose retirement has just been committed."""
        with self._lock:
            self._epoch += 1
            for path in paths:
                self._retired_epoch[path] = self._epoch

    def may_delete(self, path: str) -> bool:
        """Whether no reader in flight registered before `path` was retired (in this process)."""
        with self._lock:
            epoch = self._retired_epoch.get(path)
            if epoch is None:  # retired by another process or an earlier run: no reader here planned it
                return True
            return all(started >= epoch for started in self._active.values())

    def forget(self, paths: Iterable[str]) -> None:
        with self._lock:
            for path in paths:
                self._retired_epoch.pop(path, None)


class PartitionIndex(SqliteDatabase):
    """SQLite catalog of the archive; safe to use from several threads (one connection each)."""

    schema = _SCHEMA

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        super().__init__(path, readonly=readonly)
        self.readers = ReaderRegistry()
        if not readonly:
            with self._tx() as db:
                db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    # ---- writes ---------------------------------------------------------------------------------
    def register(self, files: list[ArchiveFile], archived: dict[StreamKey, int] | None = None) -> None:
        """Add (or replace, by path) archive files and advance stream watermarks, atomically."""
        with self._tx() as db:
            db.executemany(
                f"INSERT OR REPLACE INTO tick_archives ({_FILE_COLUMNS}) VALUES ({_FILE_PLACEHOLDERS})",
                [astuple(f) for f in files],
            )
            for stream, seq in (archived or {}).items():
                db.execute(
                    "INSERT INTO stream_state VALUES (?, ?, ?) ON CONFLICT (contract_id, tick_type) "
                    "DO UPDATE SET archived_seq = max(archived_seq, excluded.archived_seq)",
                    (stream.contract_id, stream.tick_type.value, seq),
                )

    def replace(self, new: ArchiveFile | None, old_paths: list[str], retired_at: int) -> None:
        """Swap files atomically: add `new`, drop `old_paths` from the catalog and mark them retired."""
        with self._tx() as db:
            if new is not None:
                db.execute(
                    f"INSERT OR REPLACE INTO tick_archives ({_FILE_COLUMNS}) VALUES ({_FILE_PLACEHOLDERS})",
                    astuple(new),
                )
            for path in old_paths:
                if new is not None and path == new.file_path:
                    continue
                db.execute("DELETE FROM tick_archives WHERE file_path = ?", (path,))
                db.execute("INSERT OR REPLACE INTO retired_files VALUES (?, ?)", (path, retired_at))
        self.readers.retired(p for p in old_paths if new is None or p != new.file_path)

    def put_statistics(self, rows: list[DailyStatistics], remove: Sequence[tuple[int, str, str]] = ()) -> None:
        with self._tx() as db:
            for key in remove:
                db.execute("DELETE FROM data_statistics WHERE contract_id=? AND tick_type=? AND date=?", key)
            db.executemany(
                "INSERT OR REPLACE INTO data_statistics VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [astuple(r) for r in rows]
            )

    def forget_retired(self, paths: list[str]) -> None:
        with self._tx() as db:
            db.executemany("DELETE FROM retired_files WHERE file_path = ?", [(p,) for p in paths])
        self.readers.forget(paths)

    def reset(self, files: list[ArchiveFile], archived: dict[StreamKey, int], retired: list[str], now_ns: int) -> None:
        """Replace the whole catalog (used by `index rebuild`)."""
        with self._tx() as db:
            for table in ("tick_archives", "data_statistics", "stream_state", "retired_files"):
                db.execute(f"DELETE FROM {table}")
        self.register(files, archived)
        if retired:
            with self._tx() as db:
                db.executemany("INSERT OR REPLACE INTO retired_files VALUES (?, ?)", [(p, now_ns) for p in retired])

    # ---- reads ----------------------------------------------------------------------------------
    def plan(self, stream: StreamKey, start_ns: int, end_ns: int, below_seq: int | None = None) -> list[ArchiveFile]:
        """Files of a stream that may hold ticks with start_ns <= ts < end_ns and seq < below_seq."""
        sql = (
            f"SELECT {_FILE_COLUMNS} FROM tick_archives WHERE contract_id=? AND tick_type=? "
            "AND start_time < ? AND end_time >= ?"
        )
        params: list[object] = [stream.contract_id, stream.tick_type.value, end_ns, start_ns]
        if below_seq is not None:
            sql += " AND first_seq < ?"
            params.append(below_seq)
        return [ArchiveFile(*row) for row in self._query(sql + " ORDER BY start_time, first_seq", params)]

    def files(self, stream: StreamKey | None = None) -> list[ArchiveFile]:
        sql = f"SELECT {_FILE_COLUMNS} FROM tick_archives"
        params: list[object] = []
        if stream is not None:
            sql += " WHERE contract_id=? AND tick_type=?"
            params = [stream.contract_id, stream.tick_type.value]
        return [
            ArchiveFile(*row)
            for row in self._query(sql + " ORDER BY contract_id, tick_type, partition_start, first_seq", params)
        ]

    def partition_files(self, stream: StreamKey, partition_start: int) -> list[ArchiveFile]:
        rows = self._query(
            f"SELECT {_FILE_COLUMNS} FROM tick_archives WHERE contract_id=? AND tick_type=? AND partition_start=? "
            "ORDER BY first_seq",
            (stream.contract_id, stream.tick_type.value, partition_start),
        )
        return [ArchiveFile(*row) for row in rows]

    def partitions_to_compact(self, closed_before_ns: int, partition_ns: int) -> list[tuple[StreamKey, int]]:
        """Closed partitions holding more than one file."""
        rows = self._query(
            "SELECT contract_id, tick_type, partition_start FROM tick_archives WHERE partition_start + ? <= ? "
            "GROUP BY contract_id, tick_type, partition_start HAVING count(*) > 1 ORDER BY partition_start",
            (partition_ns, closed_before_ns),
        )
        return [(StreamKey(c, TickType(t)), p) for c, t, p in rows]

    def archived_seqs(self) -> dict[StreamKey, int]:
        rows = self._query("SELECT contract_id, tick_type, archived_seq FROM stream_state")
        return {StreamKey(c, TickType(t)): s for c, t, s in rows}

    def last_seqs(self) -> dict[StreamKey, int]:
        rows = self._query("SELECT contract_id, tick_type, max(last_seq) FROM tick_archives GROUP BY 1, 2")
        return {StreamKey(c, TickType(t)): s for c, t, s in rows}

    def has_file(self, path: str) -> bool:
        """Whether the catalog lists this file (relative to the archive directory)."""
        return bool(self._query("SELECT 1 FROM tick_archives WHERE file_path = ?", (path,)))

    def end_before(self, stream: StreamKey, seq: int) -> int | None:
        """The last event time of the catalogued file holding the highest seqs below `seq` (None: no such file)."""
        rows = self._query(
            "SELECT end_time FROM tick_archives WHERE contract_id=? AND tick_type=? AND last_seq < ? "
            "ORDER BY last_seq DESC LIMIT 1",
            (stream.contract_id, stream.tick_type.value, seq),
        )
        return int(rows[0][0]) if rows else None

    def streams(self) -> list[StreamKey]:
        rows = self._query(
            "SELECT contract_id, tick_type FROM stream_state UNION SELECT contract_id, tick_type FROM tick_archives"
        )
        return sorted(StreamKey(c, TickType(t)) for c, t in rows)

    def retired(self) -> list[tuple[str, int]]:
        return [(p, t) for p, t in self._query("SELECT file_path, retired_at FROM retired_files")]

    def data_version(self) -> int:
        """Changes whenever another connection commits (SQLite `PRAGMA data_version`)."""
        return int(self._query("PRAGMA data_version")[0][0])

    def statistics(self, stream: StreamKey | None = None) -> list[DailyStatistics]:
        sql = "SELECT * FROM data_statistics"
        params: list[object] = []
        if stream is not None:
            sql += " WHERE contract_id=? AND tick_type=?"
            params = [stream.contract_id, stream.tick_type.value]
        return [DailyStatistics(*row) for row in self._query(sql + " ORDER BY contract_id, tick_type, date", params)]


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
