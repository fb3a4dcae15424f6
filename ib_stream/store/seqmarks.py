"""The seq high-water marks: per stream, the highest seq ever acknowledged, and the seq ranges found lost.

Kept in `index.db` (tables `stream_marks` and `lost_seqs`) beside the catalog and the gap ledger; `index
rebuild` leaves them alone (they cannot be rebuilt from the archive). The buffer's writer records a stream's
mark after the fsync that made a group durable and before it acknowledges the group, so the next seq after a
restart continues after the highest seq ever acknowledged even when the newest segment is gone, and the
acknowledged range no longer on disk can be named (`lost_seqs`, and a `storage_lost` gap in the ledger).

The writer's connection commits with `synchronous=NORMAL`: the mark reaches the OS at once (it survives
`kill -9`) and the disk with the next checkpoint or FULL commit of the catalog; after a power cut the segments,
which are fsynced, still hold every acknowledged tick.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass

from ib_stream.domain import StreamKey, TickType
from ib_stream.store.sqlite_db import SqliteDatabase

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stream_marks (
    contract_id   INTEGER NOT NULL,
    tick_type     TEXT    NOT NULL,
    acked_seq     INTEGER NOT NULL,  -- the highest seq ever acknowledged
    acked_ts      INTEGER NOT NULL,  -- its event time, UTC ns
    acked_recv_ts INTEGER NOT NULL,  -- its receive time, UTC ns
    PRIMARY KEY (contract_id, tick_type)
);
CREATE TABLE IF NOT EXISTS lost_seqs (
    contract_id INTEGER NOT NULL,
    tick_type   TEXT    NOT NULL,
    first_seq   INTEGER NOT NULL,  -- acknowledged seqs first_seq..last_seq are on no disk any more
    last_seq    INTEGER NOT NULL,
    start_ns    INTEGER NOT NULL,  -- the event times they spanned (as far as known), UTC ns
    end_ns      INTEGER NOT NULL,
    found_ns    INTEGER NOT NULL,
    gap_id      INTEGER,           -- the storage_lost gap recorded for them
    detail      TEXT    NOT NULL,
    PRIMARY KEY (contract_id, tick_type, first_seq)
);
"""


@dataclass(frozen=True, slots=True)
class Mark:
    """A stream's highest acknowledged seq and the times of that tick."""

    seq: int
    ts: int
    recv_ts: int


@dataclass(frozen=True, slots=True)
class LostRange:
    """Acknowledged seqs of a stream that are on no disk any more."""

    stream: StreamKey
    first_seq: int
    last_seq: int
    start_ns: int
    end_ns: int
    detail: str = ""
    gap_id: int | None = None

    @property
    def count(self) -> int:
        return self.last_seq - self.first_seq + 1


class SeqMarks(SqliteDatabase):
    """The high-water marks and the lost seq ranges, in the catalog's SQLite file."""

    schema = _SCHEMA
    what = "seq high-water marks"

    def _db(self) -> sqlite3.Connection:
        fresh = getattr(self._local, "db", None) is None
        db = super()._db()
        if fresh and not self.readonly:
            db.execute("PRAGMA synchronous=NORMAL")
        return db

    def acknowledge(self, marks: Mapping[StreamKey, Mark]) -> None:
        """Raise the marks of these streams (never lowers one) in one transaction."""
        with self._tx() as db:
            db.executemany(
                "INSERT INTO stream_marks VALUES (?, ?, ?, ?, ?) ON CONFLICT (contract_id, tick_type) DO UPDATE SET "
                "acked_seq = excluded.acked_seq, acked_ts = excluded.acked_ts, acked_recv_ts = excluded.acked_recv_ts "
                "WHERE excluded.acked_seq > acked_seq",
                [(s.contract_id, s.tick_type.value, m.seq, m.ts, m.recv_ts) for s, m in marks.items()],
            )

    def marks(self) -> dict[StreamKey, Mark]:
        if not self._has_tables():
            return {}
        rows = self._query("SELECT contract_id, tick_type, acked_seq, acked_ts, acked_recv_ts FROM stream_marks")
        return {StreamKey(c, TickType(t)): Mark(s, ts, recv) for c, t, s, ts, recv in rows}

    def record_lost(self, lost: LostRange, found_ns: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO lost_seqs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    lost.stream.contract_id,
                    lost.stream.tick_type.value,
                    lost.first_seq,
                    lost.last_seq,
                    lost.start_ns,
                    lost.end_ns,
                    found_ns,
                    lost.gap_id,
                    lost.detail,
                ),
            )

    def lost(self, stream: StreamKey | None = None) -> list[LostRange]:
        """The recorded lost ranges (of one stream), in seq order."""
        if not self._has_tables():
            return []
        sql = "SELECT contract_id, tick_type, first_seq, last_seq, start_ns, end_ns, detail, gap_id FROM lost_seqs"
        params: list[object] = []
        if stream is not None:
            sql += " WHERE contract_id = ? AND tick_type = ?"
            params = [stream.contract_id, stream.tick_type.value]
        rows = self._query(sql + " ORDER BY contract_id, tick_type, first_seq", params)
        return [LostRange(StreamKey(c, TickType(t)), a, b, s, e, d, g) for c, t, a, b, s, e, d, g in rows]

    def _has_tables(self) -> bool:
        # A read-only look at a catalog written before these tables existed finds none.
        if not self.readonly:
            return True
        return bool(self._query("SELECT 1 FROM sqlite_master WHERE name = 'stream_marks'"))
