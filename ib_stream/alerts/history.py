"""The alert history: every fired alert in its own SQLite file (`<data_root>/alerts.db`, or `alerts.db_path`),
queryable by contract and time, bounded to the newest `history_limit` alerts. Survives restarts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from ib_stream.alerts.rules import Alert
from ib_stream.live_settings import AlertsConfig
from ib_stream.store.layout import alerts_path
from ib_stream.store.sqlite_db import SqliteDatabase
from ib_stream.times import iso_us

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    contract_id INTEGER NOT NULL,
    rule        TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    bar_ts      INTEGER NOT NULL,   -- start of the bar that completed the condition (UTC ns)
    ts          INTEGER NOT NULL,   -- when the condition became true: the end of that bar (UTC ns)
    direction   TEXT    NOT NULL,
    value       REAL    NOT NULL,
    threshold   REAL    NOT NULL,
    message     TEXT    NOT NULL,
    details     TEXT    NOT NULL,   -- JSON object
    fired_ns    INTEGER NOT NULL    -- wall time the engine fired it (UTC ns)
);
CREATE INDEX IF NOT EXISTS idx_alerts_contract_ts ON alerts (contract_id, ts);
CREATE INDEX IF NOT EXISTS idx_alerts_ts ON alerts (ts);
"""
_COLUMNS = "id, contract_id, rule, kind, bar_ts, ts, direction, value, threshold, message, details, fired_ns"


def with_times(alert: dict[str, Any]) -> dict[str, Any]:
    """An alert as the API shows it, from the history and on the live streams alike: its fields plus ISO times —
    `timestamp` (its `ts`, the firing bar's end), `bar_timestamp` (`bar_ts`) and `fired_at` (`fired_ns`)."""
    return {
        **alert,
        "timestamp": iso_us(alert["ts"]),
        "bar_timestamp": iso_us(alert["bar_ts"]),
        "fired_at": iso_us(alert["fired_ns"]),
    }


class AlertHistory(SqliteDatabase):
    """The `alerts` table; blocking (call it off the event loop)."""

    schema = _SCHEMA
    what = "alert history"

    def __init__(self, path: Path, *, limit: int = 100_000, readonly: bool = False) -> None:
        super().__init__(path, readonly=readonly)
        self.limit = limit

    @classmethod
    def of(cls, config: AlertsConfig, data_root: Path) -> AlertHistory:
        """The history where the settings put it (`alerts.db_path`, default in the data root); blocking."""
        return cls(alerts_path(config, data_root), limit=config.history_limit)

    def add(self, alerts: Sequence[Alert]) -> None:
        """Store alerts (their `id` is set), then prune the oldest beyond the limit."""
        if not alerts:
            return
        with self._tx() as db:
            for a in alerts:
                cursor = db.execute(
                    f"INSERT INTO alerts ({_COLUMNS.removeprefix('id, ')}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        a.contract_id,
                        a.rule,
                        a.kind,
                        a.bar_ts,
                        a.ts,
                        a.direction,
                        a.value,
                        a.threshold,
                        a.message,
                        orjson.dumps(a.details).decode(),
                        a.fired_ns,
                    ),
                )
                a.id = cursor.lastrowid
            db.execute("DELETE FROM alerts WHERE id <= (SELECT MAX(id) FROM alerts) - ?", (self.limit,))

    def query(
        self, contract_id: int | None = None, since_ns: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Alerts with ts >= since_ns (all when None) of one contract (all when None), newest first."""
        where, params = [], []
        if contract_id is not None:
            where.append("contract_id = ?")
            params.append(contract_id)
        if since_ns is not None:
            where.append("ts >= ?")
            params.append(since_ns)
        sql = f"SELECT {_COLUMNS} FROM alerts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._query(sql + " ORDER BY ts DESC, id DESC LIMIT ?", [*params, limit])
        names = _COLUMNS.split(", ")
        out = []
        for row in rows:
            item = dict(zip(names, row, strict=True))
            item["details"] = orjson.loads(item["details"])
            out.append(item)
        return out
