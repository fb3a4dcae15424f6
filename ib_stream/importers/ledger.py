"""Importers: the import ledger that makes re-running an import store nothing twice.

Kept in the catalog file (`index.db`, table `import_batches`) beside the catalog and the gap
ledger; `index rebuild` leaves it alone (it cannot be rebuilt from the archive).

An import turns a file into, per stream, a deterministic list of ticks (same file content, same
recipe → same ticks in the same order). A batch covers a range `[first_tick, end_tick)` of that
list. It is written `pending` before its ticks are appended and `done` once the append is durable,
so after a crash at most one batch per stream is pending. A re-import skips every tick below the
end of the done batches and, for a pending batch, looks its ticks up in the store before appending
them again (the crash may have come after the append was durable, or in the middle of it).

The key is (content hash of the file, stream, recipe digest, first_tick): batches are located by
tick index rather than by batch number, so a re-run with another batch size still lines up.

A file that grew since it was imported (a recorder still writing to it) has another content hash. Each
done batch therefore also keeps `prefix_sha256`, a digest of the stream's ticks of the file from the first
up to the batch's end: when a new content's ticks give the same digest at an earlier content's batch end,
those ticks are the ones stored then, and only what follows is appended.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ib_stream.domain import StreamKey
from ib_stream.store.sqlite_db import SqliteDatabase

_SCHEMA = """
CREATE TABLE IF NOT EXISTS import_batches (
    file_sha256 TEXT    NOT NULL,   -- content hash of the imported file (decompressed / logical rows)
    contract_id INTEGER NOT NULL,
    tick_type   TEXT    NOT NULL,
    recipe      TEXT    NOT NULL,   -- sha256 of how the file was read for this stream (mapping, options)
    first_tick  INTEGER NOT NULL,   -- index of the batch's first tick among the stream's ticks of the file
    end_tick    INTEGER NOT NULL,   -- one past its last tick: [first_tick, end_tick) is covered
    batch       INTEGER NOT NULL,   -- batch number within this run of the import (for people)
    stored      INTEGER NOT NULL,   -- ticks appended by this batch (fewer when some were found stored)
    min_ts      INTEGER,            -- event-time range of the appended ticks (UTC ns)
    max_ts      INTEGER,
    first_seq   INTEGER,            -- seq range the store gave them (NULL while pending)
    last_seq    INTEGER,
    state       TEXT    NOT NULL,   -- pending | done
    file_path   TEXT    NOT NULL,
    updated_ns  INTEGER NOT NULL,
    prefix_sha256 TEXT,             -- digest of the stream's ticks [0, end_tick) of the file (NULL: older rows)
    PRIMARY KEY (file_sha256, contract_id, tick_type, recipe, first_tick)
);
"""
PENDING = "pending"
DONE = "done"


@dataclass(frozen=True, slots=True)
class BatchKey:
    """Which tick list a batch belongs to: a file's content, a stream and the recipe that read it."""

    file_sha256: str
    stream: StreamKey
    recipe: str


@dataclass(frozen=True, slots=True)
class BatchRow:
    """One row of the ledger."""

    key: BatchKey
    first_tick: int
    end_tick: int
    batch: int
    stored: int
    min_ts: int | None
    max_ts: int | None
    first_seq: int | None
    last_seq: int | None
    state: str
    file_path: str


class ImportLedger(SqliteDatabase):
    """The `import_batches` table in the catalog's SQLite file (its own connection, WAL)."""

    schema = _SCHEMA
    what = "import ledger"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        columns = {row[1] for row in self._query("PRAGMA table_info(import_batches)")}
        if "prefix_sha256" not in columns:  # a ledger written before grown files were recognised
            with self._tx() as db:
                db.execute("ALTER TABLE import_batches ADD COLUMN prefix_sha256 TEXT")

    def batches(self, key: BatchKey) -> list[BatchRow]:
        """Every batch recorded for `key`, by first tick."""
        rows = self._query(
            "SELECT first_tick, end_tick, batch, stored, min_ts, max_ts, first_seq, last_seq, state, file_path "
            "FROM import_batches WHERE file_sha256=? AND contract_id=? AND tick_type=? AND recipe=? "
            "ORDER BY first_tick",
            _key(key),
        )
        return [BatchRow(key, *row) for row in rows]

    def other_recipes(self, key: BatchKey) -> list[str]:
        """Recipes other than `key.recipe` under which this file was already imported into this stream."""
        rows = self._query(
            "SELECT DISTINCT recipe FROM import_batches WHERE file_sha256=? AND contract_id=? AND tick_type=? "
            "AND recipe<>? ORDER BY recipe",
            _key(key),
        )
        return [r[0] for r in rows]

    def earlier_ends(self, key: BatchKey, file_path: str) -> dict[int, set[str]]:
        """For the done batches of other contents of the same file (path), stream and recipe: their end ticks
        and the digests of the ticks up to them."""
        rows = self._query(
            "SELECT end_tick, prefix_sha256 FROM import_batches WHERE file_path=? AND contract_id=? AND tick_type=? "
            "AND recipe=? AND file_sha256<>? AND state=? AND prefix_sha256 IS NOT NULL",
            (file_path, key.stream.contract_id, key.stream.tick_type.value, key.recipe, key.file_sha256, DONE),
        )
        ends: dict[int, set[str]] = {}
        for end, digest in rows:
            ends.setdefault(end, set()).add(digest)
        return ends

    def begin(
        self,
        key: BatchKey,
        span: tuple[int, int],
        batch: int,
        stored: int,
        ts_range: tuple[int, int] | None,
        file_path: str,
        prefix_sha256: str | None = None,
    ) -> None:
        """Record a batch covering ticks [span) as pending, before its ticks are appended.

        It replaces a pending batch that starts at the same tick (left by an interrupted run).
        """
        min_ts, max_ts = ts_range if ts_range is not None else (None, None)
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO import_batches (file_sha256, contract_id, tick_type, recipe, first_tick, "
                "end_tick, batch, stored, min_ts, max_ts, state, file_path, updated_ns, prefix_sha256) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*_key(key), *span, batch, stored, min_ts, max_ts, PENDING, file_path, time.time_ns(), prefix_sha256),
            )

    def commit(self, key: BatchKey, first_tick: int, seqs: tuple[int, int] | None) -> None:
        """Mark a batch done: its ticks are durable in the store (call only after the append returned)."""
        first_seq, last_seq = seqs if seqs is not None else (None, None)
        with self._tx() as db:
            db.execute(
                "UPDATE import_batches SET state=?, first_seq=?, last_seq=?, updated_ns=? "
                "WHERE file_sha256=? AND contract_id=? AND tick_type=? AND recipe=? AND first_tick=?",
                (DONE, first_seq, last_seq, time.time_ns(), *_key(key), first_tick),
            )


def _key(key: BatchKey) -> tuple[str, int, str, str]:
    return (key.file_sha256, key.stream.contract_id, key.stream.tick_type.value, key.recipe)
