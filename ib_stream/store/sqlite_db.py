"""One SQLite database file used from several threads: a connection per thread, WAL, errors as StorageError.

The catalog (`index.PartitionIndex`) and the gap ledger (`gaps.GapLedger`) share `index.db`, each
through its own `SqliteDatabase` with its own tables.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ib_stream.errors import StorageError


class SqliteDatabase:
    """A SQLite file: `schema` is created when opened writable; `_tx` is an immediate transaction."""

    schema = ""
    what = "catalog"

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []  # every thread's connection: `close` closes them all
        self._opened_lock = threading.Lock()
        if not readonly:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._db().executescript(self.schema)
            except sqlite3.Error as e:
                raise StorageError(f"{self.what} {path} cannot be created: {e}", details={"path": str(path)}) from e

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            try:
                # Used by the thread that opened it only; `check_same_thread=False` lets `close` end it from another.
                if self.readonly:
                    db = sqlite3.connect(
                        f"file:{self.path}?mode=ro", uri=True, timeout=30, isolation_level=None, check_same_thread=False
                    )
                else:
                    db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
                    db.execute("PRAGMA journal_mode=WAL")
                    db.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error as e:
                raise StorageError(
                    f"{self.what} {self.path} cannot be opened: {e}", details={"path": str(self.path)}
                ) from e
            self._local.db = db
            with self._opened_lock:
                self._opened.append(db)
        return db

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as e:
            raise StorageError(f"{self.what} {self.path} update failed: {e}") from e

    def _query(self, sql: str, params: Iterable[object] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._db().execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as e:
            raise StorageError(f"{self.what} {self.path} read failed: {e}") from e

    def close(self) -> None:
        """Close the connections of every thread (when none of them uses the database any more): the last one to
        close checkpoints the WAL and removes it, so the file alone is the whole database again."""
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for db in opened:
            db.close()
        self._local = threading.local()
