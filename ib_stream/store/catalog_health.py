"""Catalog health (store): whether `index.db` is damaged, and setting a damaged catalog aside so `index rebuild`
can recreate it from the archive files.

The catalog file holds more than the archive's catalog: the gap ledger and the import ledger live in it too, and
no archive file can give them back. A damaged catalog is therefore never deleted: it is renamed beside itself
(`index.db.corrupt-<UTC stamp>`, with its `-wal` and `-shm`), where SQLite can still open what is left of it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from urllib.parse import quote

from ib_stream.store.layout import Layout, fsync_dir
from ib_stream.times import iso_basic

# SQLite's primary result codes that mean the file itself is damaged (not busy, not missing, not denied), and those
# of a disk that failed or filled up.
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_SQLITE_IOERR = 10
_SQLITE_FULL = 13
_SIDE_FILES = ("-wal", "-shm")  # moved first: a new catalog must never meet the old catalog's WAL


def is_damage(error: BaseException) -> bool:
    """Whether a sqlite3 error says the database file is damaged (corrupt, or not a database at all)."""
    code = getattr(error, "sqlite_errorcode", None)
    return (
        isinstance(error, sqlite3.DatabaseError)
        and code is not None
        and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    )


def is_disk_trouble(error: BaseException) -> bool:
    """Whether a sqlite3 error says the disk failed or is full (SQLite reports ENOSPC as either)."""
    code = getattr(error, "sqlite_errorcode", None)
    return isinstance(error, sqlite3.Error) and code is not None and code & 0xFF in (_SQLITE_IOERR, _SQLITE_FULL)


def catalog_damage(layout: Layout, *, thorough: bool = False) -> str | None:
    """Why the catalog is damaged, or None when it reads (or does not exist, or cannot be opened for another reason).

    Reads the schema only; `thorough` runs SQLite's quick_check over every page (what `index rebuild` does).
    """
    path = layout.index_file
    if not path.is_file():
        return None
    try:
        db = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=30, isolation_level=None)
        with contextlib.closing(db):
            rows = db.execute("PRAGMA quick_check" if thorough else "SELECT count(*) FROM sqlite_master").fetchall()
    except sqlite3.Error as e:
        return str(e) if is_damage(e) else None
    if thorough and rows != [("ok",)]:
        return "; ".join(str(row[0]) for row in rows[:3])
    return None


def set_aside_catalog(layout: Layout, now_ns: int) -> Path:
    """Rename the catalog and its -wal / -shm to `<name>.corrupt-<UTC stamp>` beside it; return the new catalog path."""
    path = layout.index_file
    stamp = iso_basic(now_ns)
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while any(Path(f"{aside}{suffix}").exists() for suffix in ("", *_SIDE_FILES)):
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    for suffix in (*_SIDE_FILES, ""):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(f"{aside}{suffix}")
    fsync_dir(path.parent)
    return aside
