"""The gap ledger: every interval a stream should have had data and did not, why, and whether it was backfilled.

Kept in `index.db` (tables `gaps` and `service_runs`) beside the catalog; `index rebuild` leaves
it alone (it cannot be rebuilt from the archive). Times are UTC int64 ns.

    ledger.open_gaps([stream], now_ns, GapReason.DISCONNECT, "IB 1100: connectivity lost", code=1100)
    ledger.close_gaps([stream], now_ns)              # data flows again; the gap waits for backfill
    ledger.open_each({stream: last_tick_ns}, ...)    # each stream from its own start (close_each: own end)
    ledger.gaps(contract_id, start_ns, end_ns)  # what /v2/contracts/{id}/coverage and `ib-stream coverage` show

Service runs: the service calls `begin_run` at start-up, `heartbeat` while it runs and `end_run`
on a clean stop. `begin_run` returns the previous run, so the time the service was down (stopped,
or crashed: no `end_run`, the last heartbeat is when it was last known alive) becomes gaps too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ib_stream.domain import StreamKey, TickType
from ib_stream.store.sqlite_db import SqliteDatabase
from ib_stream.times import iso_us

_SCHEMA = """
CREATE TABLE IF NOT EXISTS gaps (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    contract_id      INTEGER NOT NULL,
    tick_type        TEXT    NOT NULL,
    start_ns         INTEGER NOT NULL,
    end_ns           INTEGER,                          -- NULL while the gap lasts
    reason           TEXT    NOT NULL,                 -- GapReason
    code             INTEGER,                          -- the IB code that caused it, if any
    detail           TEXT    NOT NULL,
    backfill         TEXT    NOT NULL DEFAULT 'pending',  -- BackfillState
    backfilled_ticks INTEGER NOT NULL DEFAULT 0,
    backfill_note    TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS idx_gaps_stream ON gaps (contract_id, tick_type, start_ns);
CREATE TABLE IF NOT EXISTS service_runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    started_ns    INTEGER NOT NULL,
    last_alive_ns INTEGER NOT NULL,
    stopped_ns    INTEGER,                             -- NULL: running, or crashed
    pid           INTEGER NOT NULL,
    source        TEXT    NOT NULL
);
"""


class GapReason(StrEnum):
    """Why a stream had no data."""

    DISCONNECT = "disconnect"  # the IB connection dropped, or IB lost its own connectivity (1100)
    STALE_FEED = "stale_feed"  # connected, session open, no data: the watchdog gave up on the connection
    SERVICE_DOWN = "service_down"  # the service was stopped
    SERVICE_CRASH = "service_crash"  # the service died without stopping (found at the next start)
    SUBSCRIPTION_REFUSED = "subscription_refused"  # IB refused the subscription (permissions, limits)
    BROKER_UNREACHABLE = "broker_unreachable"  # IB is enabled but TWS / IB Gateway never answered since start-up
    STORAGE_ERROR = "storage_error"  # the disk refused writes (full, I/O error): ticks produced meanwhile were dropped
    STORAGE_LOST = "storage_lost"  # acknowledged ticks are on no disk any more (a buffer segment removed or lost)


class BackfillState(StrEnum):
    """Where a gap stands with backfill."""

    PENDING = "pending"  # not tried yet
    DONE = "done"  # reqHistoricalTicks returned the span (possibly empty: IB had nothing)
    PARTIAL = "partial"  # part of the span was filled (see backfill_note)
    NOT_POSSIBLE = "not_possible"  # IB has no history for this tick type (depth)
    FAILED = "failed"  # requests failed (see backfill_note); can be retried with `ib-stream backfill`
    OFF = "off"  # automatic backfill is disabled


_GAP_COLUMNS = (
    "id, contract_id, tick_type, start_ns, end_ns, reason, code, detail, backfill, backfilled_ticks, backfill_note"
)


@dataclass(frozen=True, slots=True)
class Gap:
    """One row of the ledger."""

    id: int
    contract_id: int
    tick_type: str
    start_ns: int
    end_ns: int | None
    reason: str
    code: int | None
    detail: str
    backfill: str
    backfilled_ticks: int
    backfill_note: str

    @property
    def stream(self) -> StreamKey:
        return StreamKey(self.contract_id, TickType(self.tick_type))

    def overlaps(self, start_ns: int, end_ns: int) -> bool:
        return self.start_ns < end_ns and (self.end_ns is None or self.end_ns > start_ns)


@dataclass(frozen=True, slots=True)
class ServiceRun:
    """One run of the service."""

    id: int
    started_ns: int
    last_alive_ns: int
    stopped_ns: int | None
    pid: int
    source: str

    @property
    def crashed(self) -> bool:
        """Whether it ended without `end_run` (only meaningful for a run that is over)."""
        return self.stopped_ns is None

    @property
    def down_from_ns(self) -> int:
        """When data stopped flowing: the clean stop, else the last heartbeat."""
        return self.stopped_ns if self.stopped_ns is not None else self.last_alive_ns


class GapLedger(SqliteDatabase):
    """The gap ledger and the service runs, in the catalog's SQLite file."""

    schema = _SCHEMA
    what = "gap ledger"

    # ---- gaps -------------------------------------------------------------------------------------------
    def open_gaps(
        self, streams: Iterable[StreamKey], start_ns: int, reason: GapReason, detail: str, code: int | None = None
    ) -> list[int]:
        """Open a gap on each stream that has none open; return the new gap ids."""
        return self.open_each({stream: start_ns for stream in streams}, reason, detail, code)

    def open_each(
        self, starts: Mapping[StreamKey, int], reason: GapReason, detail: str, code: int | None = None
    ) -> list[int]:
        """Open a gap on each stream of `starts` that has none open, from its own start; return the new gap ids."""
        ids = []
        with self._tx() as db:
            for stream, start_ns in starts.items():
                key = (stream.contract_id, stream.tick_type.value)
                if db.execute(
                    "SELECT 1 FROM gaps WHERE contract_id=? AND tick_type=? AND end_ns IS NULL", key
                ).fetchone():
                    continue
                cursor = db.execute(
                    "INSERT INTO gaps (contract_id, tick_type, start_ns, reason, code, detail) VALUES (?, ?, ?, ?, ?, ?)",
                    (*key, start_ns, reason.value, code, detail),
                )
                ids.append(int(cursor.lastrowid or 0))
        return ids

    def close_gaps(
        self, streams: Iterable[StreamKey] | None, end_ns: int, reasons: Sequence[GapReason] = ()
    ) -> list[Gap]:
        """Close the open gaps of `streams` (None: every stream), optionally only those of `reasons`."""
        open_gaps = [g for g in self.gaps(open_only=True) if not reasons or g.reason in reasons]
        if streams is not None:
            wanted = set(streams)
            open_gaps = [g for g in open_gaps if g.stream in wanted]
        if not open_gaps:
            return []
        with self._tx() as db:
            db.executemany(
                "UPDATE gaps SET end_ns = max(start_ns, ?) WHERE id = ?", [(end_ns, g.id) for g in open_gaps]
            )
        return self.by_ids([g.id for g in open_gaps])

    def close_each(self, ends: Mapping[StreamKey, int]) -> list[Gap]:
        """Close the open gaps of each stream of `ends` at its own end (never before the gap's start)."""
        open_gaps = [g for g in self.gaps(open_only=True) if g.stream in ends]
        if not open_gaps:
            return []
        with self._tx() as db:
            db.executemany(
                "UPDATE gaps SET end_ns = max(start_ns, ?) WHERE id = ?", [(ends[g.stream], g.id) for g in open_gaps]
            )
        return self.by_ids([g.id for g in open_gaps])

    def add(
        self,
        stream: StreamKey,
        start_ns: int,
        end_ns: int,
        reason: GapReason,
        detail: str,
        backfill: BackfillState = BackfillState.PENDING,
    ) -> int:
        """Record a gap that is already over."""
        with self._tx() as db:
            cursor = db.execute(
                "INSERT INTO gaps (contract_id, tick_type, start_ns, end_ns, reason, detail, backfill) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (stream.contract_id, stream.tick_type.value, start_ns, end_ns, reason.value, detail, backfill.value),
            )
            return int(cursor.lastrowid or 0)

    def set_backfill(self, gap_id: int, state: BackfillState, ticks: int = 0, note: str = "") -> None:
        """Record the outcome of backfilling a gap (ticks add up over attempts)."""
        with self._tx() as db:
            db.execute(
                "UPDATE gaps SET backfill = ?, backfilled_ticks = backfilled_ticks + ?, backfill_note = ? WHERE id = ?",
                (state.value, ticks, note, gap_id),
            )

    def gaps(
        self,
        contract_id: int | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
        *,
        tick_type: TickType | None = None,
        open_only: bool = False,
        backfill: Sequence[BackfillState] = (),
    ) -> list[Gap]:
        """Gaps overlapping [start_ns, end_ns), oldest first."""
        where: list[str] = []
        params: list[object] = []
        if contract_id is not None:
            where.append("contract_id = ?")
            params.append(contract_id)
        if tick_type is not None:
            where.append("tick_type = ?")
            params.append(tick_type.value)
        if end_ns is not None:
            where.append("start_ns < ?")
            params.append(end_ns)
        if start_ns is not None:
            where.append("(end_ns IS NULL OR end_ns > ?)")
            params.append(start_ns)
        if open_only:
            where.append("end_ns IS NULL")
        if backfill:
            where.append(f"backfill IN ({', '.join('?' for _ in backfill)})")
            params += [b.value for b in backfill]
        sql = f"SELECT {_GAP_COLUMNS} FROM gaps" + (f" WHERE {' AND '.join(where)}" if where else "")
        return [Gap(*row) for row in self._query(sql + " ORDER BY start_ns, id", params)]

    def by_ids(self, ids: Sequence[int]) -> list[Gap]:
        if not ids:
            return []
        sql = f"SELECT {_GAP_COLUMNS} FROM gaps WHERE id IN ({', '.join('?' for _ in ids)}) ORDER BY start_ns, id"
        return [Gap(*row) for row in self._query(sql, ids)]

    # ---- service runs -----------------------------------------------------------------------------------
    def begin_run(self, now_ns: int, source: str) -> ServiceRun | None:
        """Start a run; return the previous one (None on the first start).

        Gaps still open from the previous run end when it was last known alive: from then on the
        service-down gap the caller records takes over.
        """
        previous = self.last_run()
        with self._tx() as db:
            if previous is not None:
                db.execute("UPDATE gaps SET end_ns = max(start_ns, ?) WHERE end_ns IS NULL", (previous.down_from_ns,))
            db.execute(
                "INSERT INTO service_runs (started_ns, last_alive_ns, pid, source) VALUES (?, ?, ?, ?)",
                (now_ns, now_ns, os.getpid(), source),
            )
        return previous

    def heartbeat(self, now_ns: int) -> None:
        """Note that the current run is alive (a crash is then dated to within one heartbeat)."""
        with self._tx() as db:
            db.execute(
                "UPDATE service_runs SET last_alive_ns = max(last_alive_ns, ?) "
                "WHERE id = (SELECT max(id) FROM service_runs)",
                (now_ns,),
            )

    def end_run(self, now_ns: int) -> None:
        """A clean stop of the current run."""
        with self._tx() as db:
            db.execute(
                "UPDATE service_runs SET stopped_ns = ?, last_alive_ns = max(last_alive_ns, ?) "
                "WHERE id = (SELECT max(id) FROM service_runs)",
                (now_ns, now_ns),
            )

    def last_run(self) -> ServiceRun | None:
        rows = self._query(
            "SELECT id, started_ns, last_alive_ns, stopped_ns, pid, source FROM service_runs ORDER BY id DESC LIMIT 1"
        )
        return ServiceRun(*rows[0]) if rows else None

    def runs(self) -> list[ServiceRun]:
        rows = self._query(
            "SELECT id, started_ns, last_alive_ns, stopped_ns, pid, source FROM service_runs ORDER BY id"
        )
        return [ServiceRun(*row) for row in rows]


def gap_summary(gap: Gap) -> dict[str, Any]:
    """A gap as the API and the CLI show it."""
    return {
        "id": gap.id,
        "tick_type": gap.tick_type,
        "start": iso_us(gap.start_ns),
        "end": iso_us(gap.end_ns) if gap.end_ns is not None else None,
        "duration_seconds": None if gap.end_ns is None else (gap.end_ns - gap.start_ns) / 1e9,
        "reason": gap.reason,
        "code": gap.code,
        "detail": gap.detail,
        "backfill": gap.backfill,
        "backfilled_ticks": gap.backfilled_ticks,
        "backfill_note": gap.backfill_note,
    }
