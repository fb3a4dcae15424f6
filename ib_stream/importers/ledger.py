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

Each run that stores (or finds stored) ticks is an **import**, table `imports`, with an id for `import list` and
`import undo`. Its ticks are attributed to it by seq: `import_ranges` holds, per stream, the seq range each of its
batches was given (`[first_seq, end_seq)`, contiguous: a batch is sequenced in one piece). A range is written
`pending` with the batch — from the stream's next seq and the ticks about to be appended, before the append — and
made exact with `done`, in the same transactions as the batch. A pending range left by a killed run is read, at
undo, up to the first seq a later import of the stream was given (nothing it did not append can lie below that),
and only ticks with source `import` are removed. `import_streams` sums what each import did per stream (ticks
stored, ticks found already stored by content, event-time span).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ib_stream.domain import StreamKey, TickType
from ib_stream.errors import ValidationError
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
    import_id   INTEGER,            -- the import (run) that wrote the batch (NULL: older rows)
    held_out    INTEGER NOT NULL DEFAULT 0,  -- ticks refused as lying in the future: a re-run reads them again
    PRIMARY KEY (file_sha256, contract_id, tick_type, recipe, first_tick)
);
CREATE TABLE IF NOT EXISTS imports (
    import_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    file_path   TEXT    NOT NULL,
    file_sha256 TEXT    NOT NULL,
    how         TEXT    NOT NULL,   -- preset, mapping or options, as given
    started_ns  INTEGER NOT NULL,
    finished_ns INTEGER,            -- NULL: the run did not finish (killed, or still running)
    state       TEXT    NOT NULL,   -- imported | undoing | undone
    undone_ns   INTEGER
);
CREATE TABLE IF NOT EXISTS import_streams (
    import_id   INTEGER NOT NULL,
    contract_id INTEGER NOT NULL,
    tick_type   TEXT    NOT NULL,
    stored      INTEGER NOT NULL,   -- ticks appended
    matched     INTEGER NOT NULL,   -- ticks found already stored by content (not counting the ledger's skips)
    min_ts      INTEGER NOT NULL,   -- event-time span of both (UTC ns)
    max_ts      INTEGER NOT NULL,
    PRIMARY KEY (import_id, contract_id, tick_type)
);
CREATE TABLE IF NOT EXISTS import_ranges (
    import_id   INTEGER NOT NULL,
    contract_id INTEGER NOT NULL,
    tick_type   TEXT    NOT NULL,
    first_seq   INTEGER NOT NULL,   -- pending: the stream's next seq when the batch began
    end_seq     INTEGER NOT NULL,   -- one past the last seq (pending: first_seq + the ticks about to be appended)
    min_ts      INTEGER NOT NULL,
    max_ts      INTEGER NOT NULL,
    state       TEXT    NOT NULL,   -- pending | done
    PRIMARY KEY (import_id, contract_id, tick_type, first_seq)
);
"""
PENDING = "pending"
DONE = "done"
IMPORTED = "imported"
UNDOING = "undoing"
UNDONE = "undone"
_ADDED_COLUMNS = {"prefix_sha256": "TEXT", "import_id": "INTEGER", "held_out": "INTEGER NOT NULL DEFAULT 0"}


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
    held_out: int = 0  # ticks of the batch refused as lying in the future (a re-run looks at them again)


@dataclass(frozen=True, slots=True)
class BatchDone:
    """What a committed batch adds to its import: its appended ticks' span, ticks found stored, ticks held out."""

    import_id: int
    seq_from: int  # the seq its pending range started at
    stored_ts: tuple[int, int] | None  # event-time span of the appended ticks
    routed_ts: tuple[int, int] | None  # event-time span of the appended and the matched ticks
    matched: int = 0
    held_out: int = 0


@dataclass(frozen=True, slots=True)
class StreamSummary:
    """What one import did to one stream."""

    stream: StreamKey
    stored: int
    matched: int
    min_ts: int
    max_ts: int


@dataclass(frozen=True, slots=True)
class ImportInfo:
    """One import (a run of `import file` / `import orderflow` that stored or found ticks)."""

    import_id: int
    file_path: str
    file_sha256: str
    how: str
    started_ns: int
    finished_ns: int | None
    state: str
    streams: tuple[StreamSummary, ...] = field(default=())

    @property
    def stored(self) -> int:
        return sum(s.stored for s in self.streams)

    @property
    def span(self) -> tuple[int, int] | None:
        if not self.streams:
            return None
        return min(s.min_ts for s in self.streams), max(s.max_ts for s in self.streams)


@dataclass(frozen=True, slots=True)
class SeqRanges:
    """The ticks of one stream an import appended: seq ranges [first, end) and their event-time span."""

    stream: StreamKey
    ranges: tuple[tuple[int, int], ...]
    min_ts: int
    max_ts: int


class ImportLedger(SqliteDatabase):
    """The import tables in the catalog's SQLite file (its own connection, WAL)."""

    schema = _SCHEMA
    what = "import ledger"

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        super().__init__(path, readonly=readonly)
        if readonly:
            return
        columns = {row[1] for row in self._query("PRAGMA table_info(import_batches)")}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in columns:  # a ledger written before grown files, imports or held-out ticks
                with self._tx() as db:
                    db.execute(f"ALTER TABLE import_batches ADD COLUMN {name} {kind}")

    # ---- batches of a file ----------------------------------------------------------------------------------
    def batches(self, key: BatchKey) -> list[BatchRow]:
        """Every batch recorded for `key`, by first tick."""
        rows = self._query(
            "SELECT first_tick, end_tick, batch, stored, min_ts, max_ts, first_seq, last_seq, state, file_path, "
            "held_out FROM import_batches WHERE file_sha256=? AND contract_id=? AND tick_type=? AND recipe=? "
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
        import_id: int | None = None,
        seq_from: int | None = None,
    ) -> None:
        """Record a batch covering ticks [span) as pending, before its ticks are appended, and the seq range its
        `stored` ticks will get from `seq_from` (the stream's next seq) as the import's pending range.

        It replaces a pending batch that starts at the same tick (left by an interrupted run).
        """
        min_ts, max_ts = ts_range if ts_range is not None else (None, None)
        stream = key.stream
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO import_batches (file_sha256, contract_id, tick_type, recipe, first_tick, "
                "end_tick, batch, stored, min_ts, max_ts, state, file_path, updated_ns, prefix_sha256, import_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    *_key(key),
                    *span,
                    batch,
                    stored,
                    min_ts,
                    max_ts,
                    PENDING,
                    file_path,
                    time.time_ns(),
                    prefix_sha256,
                    import_id,
                ),
            )
            if import_id is not None and seq_from is not None and stored and ts_range is not None:
                db.execute(
                    "INSERT OR REPLACE INTO import_ranges VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        import_id,
                        stream.contract_id,
                        stream.tick_type.value,
                        seq_from,
                        seq_from + stored,
                        *ts_range,
                        PENDING,
                    ),
                )

    def commit(
        self, key: BatchKey, first_tick: int, seqs: tuple[int, int] | None, done: BatchDone | None = None
    ) -> None:
        """Mark a batch done: its ticks are durable in the store (call only after the append returned); with `done`,
        make its import's pending range exact and add the batch to the import's summary of the stream."""
        first_seq, last_seq = seqs if seqs is not None else (None, None)
        stream = key.stream
        with self._tx() as db:
            db.execute(
                "UPDATE import_batches SET state=?, first_seq=?, last_seq=?, updated_ns=?, held_out=? "
                "WHERE file_sha256=? AND contract_id=? AND tick_type=? AND recipe=? AND first_tick=?",
                (DONE, first_seq, last_seq, time.time_ns(), done.held_out if done else 0, *_key(key), first_tick),
            )
            if done is None:
                return
            where = (done.import_id, stream.contract_id, stream.tick_type.value)
            db.execute(
                "DELETE FROM import_ranges WHERE import_id=? AND contract_id=? AND tick_type=? AND first_seq=?",
                (*where, done.seq_from),
            )
            stored = 0
            if first_seq is not None and last_seq is not None and done.stored_ts is not None:
                stored = last_seq - first_seq + 1
                db.execute(
                    "INSERT OR REPLACE INTO import_ranges VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (*where, first_seq, last_seq + 1, *done.stored_ts, DONE),
                )
            if done.routed_ts is not None:
                db.execute(
                    "INSERT INTO import_streams VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (import_id, contract_id, tick_type) DO UPDATE SET stored = stored + excluded.stored, "
                    "matched = matched + excluded.matched, min_ts = min(min_ts, excluded.min_ts), "
                    "max_ts = max(max_ts, excluded.max_ts)",
                    (*where, stored, done.matched, *done.routed_ts),
                )

    # ---- imports ----------------------------------------------------------------------------------------------
    def start_import(self, file_path: str, file_sha256: str, how: str) -> int:
        """Record a new import (a run that is about to store, or has found stored, ticks); return its id."""
        with self._tx() as db:
            cursor = db.execute(
                "INSERT INTO imports (file_path, file_sha256, how, started_ns, state) VALUES (?, ?, ?, ?, ?)",
                (file_path, file_sha256, how, time.time_ns(), IMPORTED),
            )
            return int(cursor.lastrowid or 0)

    def finish_import(self, import_id: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE imports SET finished_ns=? WHERE import_id=?", (time.time_ns(), import_id))

    def has_imports(self) -> bool:
        """Whether the file holds the imports table (a catalog written before imports had ids does not)."""
        return bool(self._query("SELECT 1 FROM sqlite_master WHERE type='table' AND name='imports'"))

    def imports(self, import_id: int | None = None) -> list[ImportInfo]:
        """Every import (or the one with `import_id`), oldest first, with what it did per stream."""
        where, params = (" WHERE import_id=?", (import_id,)) if import_id is not None else ("", ())
        streams: dict[int, list[StreamSummary]] = {}
        for iid, contract_id, tick_type, stored, matched, min_ts, max_ts in self._query(
            f"SELECT import_id, contract_id, tick_type, stored, matched, min_ts, max_ts FROM import_streams{where} "
            "ORDER BY 1, 2, 3",
            params,
        ):
            summary = StreamSummary(StreamKey(contract_id, TickType(tick_type)), stored, matched, min_ts, max_ts)
            streams.setdefault(iid, []).append(summary)
        rows = self._query(
            f"SELECT import_id, file_path, file_sha256, how, started_ns, finished_ns, state FROM imports{where} "
            "ORDER BY import_id",
            params,
        )
        return [
            ImportInfo(iid, path, sha, how, started, finished, state, tuple(streams.get(iid, ())))
            for iid, path, sha, how, started, finished, state in rows
        ]

    def import_info(self, import_id: int) -> ImportInfo:
        """The import with `import_id`; raise ValidationError naming the id when there is none."""
        found = self.imports(import_id)
        if not found:
            raise ValidationError("ID", import_id, "is not an import of this data root (see `ib-stream import list`)")
        return found[0]

    def set_state(self, import_id: int, state: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE imports SET state=? WHERE import_id=?", (state, import_id))

    def seq_ranges(self, import_id: int) -> list[SeqRanges]:
        """Per stream, the seq ranges of the ticks the import appended; a pending range (an interrupted batch) ends
        at the first seq a later import of the stream was given."""
        rows = self._query(
            "SELECT contract_id, tick_type, first_seq, end_seq, min_ts, max_ts, state FROM import_ranges "
            "WHERE import_id=? ORDER BY 1, 2, 3",
            (import_id,),
        )
        found: dict[StreamKey, list[tuple[int, int, int, int]]] = {}
        for contract_id, tick_type, first, end, min_ts, max_ts, state in rows:
            stream = StreamKey(contract_id, TickType(tick_type))
            if state == PENDING:
                (later,) = self._query(
                    "SELECT min(first_seq) FROM import_ranges WHERE import_id>? AND contract_id=? AND tick_type=? "
                    "AND first_seq>=?",
                    (import_id, contract_id, tick_type, first),
                )[0]
                end = min(end, later) if later is not None else end
            if end > first:
                found.setdefault(stream, []).append((first, end, min_ts, max_ts))
        return [
            SeqRanges(stream, tuple((a, b) for a, b, _, _ in spans), min(s[2] for s in spans), max(s[3] for s in spans))
            for stream, spans in sorted(found.items())
        ]

    def forget(self, info: ImportInfo) -> None:
        """After an undo: drop the import's seq ranges and every batch of its file's content (a re-import reads the
        file again, matching by content what is still stored), and mark it undone."""
        with self._tx() as db:
            db.execute("DELETE FROM import_ranges WHERE import_id=?", (info.import_id,))
            db.execute("DELETE FROM import_batches WHERE file_sha256=?", (info.file_sha256,))
            db.execute(
                "UPDATE imports SET state=?, undone_ns=? WHERE import_id=?", (UNDONE, time.time_ns(), info.import_id)
            )

    def later_matches(self, info: ImportInfo) -> list[int]:
        """Later imports, not undone, that found ticks already stored in a stream and span of `info`'s (maybe its)."""
        found: set[int] = set()
        for s in info.streams:
            rows = self._query(
                "SELECT s.import_id FROM import_streams s JOIN imports i ON i.import_id = s.import_id "
                "WHERE s.import_id>? AND i.state<>? AND s.contract_id=? AND s.tick_type=? AND s.matched>0 "
                "AND s.min_ts<=? AND s.max_ts>=?",
                (info.import_id, UNDONE, s.stream.contract_id, s.stream.tick_type.value, s.max_ts, s.min_ts),
            )
            found |= {r[0] for r in rows}
        return sorted(found)


def _key(key: BatchKey) -> tuple[str, int, str, str]:
    return (key.file_sha256, key.stream.contract_id, key.stream.tick_type.value, key.recipe)


def covered_upto(rows: Sequence[BatchRow]) -> int:
    """The end of the done batches of a tick list, up to the first batch that is pending or held ticks out: below it
    every tick is known stored. (Ticks before a batch that starts later than the one before it were found stored by
    an earlier content of a grown file.)"""
    upto = 0
    for row in sorted(rows, key=lambda r: r.first_tick):
        if row.state != DONE or row.held_out:
            break
        upto = max(upto, row.end_tick)
    return upto
