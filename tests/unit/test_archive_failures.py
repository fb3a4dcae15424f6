"""Archival, compaction, snapshots and rollups that fail on a full disk (or an I/O error, or a catalog that cannot
commit) at any step: the catalog and the files stay consistent (`verify` is clean, every tick is queried exactly
once), no temp file is left, nothing is catalogued twice, and the next run of the job does the work.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ib_stream.clock import ManualClock
from ib_stream.domain import StreamKey, TickType
from ib_stream.errors import StorageError
from ib_stream.settings import StorageConfig
from ib_stream.storage import StorageQuery, TickStore
from ib_stream.store import archive as archive_module
from ib_stream.store.layout import TEMP_MARK, temp_path
from ib_stream.store.repair import verify
from tests.conftest import CONTRACT, T0_NS, seconds, trade
from tests.unit.test_book import level

LAST = StreamKey(CONTRACT, TickType.LAST)
HOUR = 3600


def full() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def catalog_full(*args: Any, **kwargs: Any) -> None:
    raise StorageError("catalog update failed") from sqlite3.OperationalError("database or disk is full")


def failing_fsync(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    real = os.fsync

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if where in path and TEMP_MARK in path:
            raise full()
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def failing_replace(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    real = os.replace

    def replace(source: Any, target: Any) -> None:
        if where in str(target):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(target))
        real(source, target)

    monkeypatch.setattr(os, "replace", replace)


def failing_catalog(monkeypatch: pytest.MonkeyPatch, store: TickStore) -> None:
    monkeypatch.setattr(store.index, "register", catalog_full)
    monkeypatch.setattr(store.index, "replace", catalog_full)


def half_written(monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    # The `at`-th Parquet write of the job runs out of space half-way: its temp file holds a partial file.
    real = archive_module.write_parquet_atomic
    calls = {"n": 0}

    def write(table: Any, final: Path, **kwargs: Any) -> tuple[int, str]:
        calls["n"] += 1
        if calls["n"] == at:
            final.parent.mkdir(parents=True, exist_ok=True)
            temp_path(final).write_bytes(b"PAR1 and then the disk was full")
            raise full()
        return real(table, final, **kwargs)

    monkeypatch.setattr(archive_module, "write_parquet_atomic", write)


FAULTS: dict[str, Callable[[pytest.MonkeyPatch, TickStore], None]] = {
    "parquet-half-written-first": lambda mp, store: half_written(mp, 1),
    "parquet-half-written-second": lambda mp, store: half_written(mp, 2),
    "fsync-of-temp": lambda mp, store: failing_fsync(mp, str(store.layout.archive_dir)),
    "rename": lambda mp, store: failing_replace(mp, str(store.layout.archive_dir)),
    "catalog-commit": lambda mp, store: failing_catalog(mp, store),
}


def temp_files(store: TickStore) -> list[Path]:
    return list(store.layout.temp_files())


async def all_seqs(store: TickStore) -> list[int]:
    frame = await StorageQuery(store.engine).query_range(CONTRACT, "last", T0_NS - 2 * HOUR * 10**9, T0_NS + 10**13)
    return sorted(int(s) for s in frame["seq"])


async def two_hours_of_trades(store: TickStore, clock: ManualClock) -> int:
    """Four segments; each holds ticks of its own hour and late ticks of the hour before (two parts each)."""
    count = 0
    for _ in range(4):
        base = clock.now_ns()
        ticks = [trade(base + seconds(i), i) for i in range(20)] + [trade(base - seconds(HOUR), 99)]
        await store.append_batch(CONTRACT, "last", ticks)
        count += len(ticks)
        clock.advance(15 * 60)
    return count


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_failed_archival_leaves_catalog_and_files_consistent_and_is_redone(
    store: TickStore, clock: ManualClock, config: StorageConfig, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    count = await two_hours_of_trades(store, clock)
    clock.advance(HOUR)
    with monkeypatch.context() as mp:
        FAULTS[fault](mp, store)
        with pytest.raises(StorageError):
            store.run_archival()
    assert temp_files(store) == []
    assert store.index.archived_seqs().get(LAST, 0) == 0 and store.index.files() == []
    assert verify(config).ok, verify(config).problems
    assert await all_seqs(store) == list(range(1, count + 1))

    store.run_archival()  # the next run does it
    assert store.index.archived_seqs()[LAST] == count
    assert verify(config).ok
    assert await all_seqs(store) == list(range(1, count + 1))


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_failed_compaction_leaves_catalog_and_files_consistent_and_is_redone(
    store: TickStore, clock: ManualClock, config: StorageConfig, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    count = await two_hours_of_trades(store, clock)
    clock.advance(2 * HOUR)
    store.run_archival()
    parts = sorted(f.file_path for f in store.index.files())
    assert len(parts) == 8
    with monkeypatch.context() as mp:
        FAULTS[fault](mp, store)
        with pytest.raises(StorageError):
            store.run_compaction()
    assert temp_files(store) == []
    files = store.index.files()  # per hour: its parts, or (compacted before the failure) one file
    assert sum(f.tick_count for f in files) == count and {f.file_path for f in files if f.kind == "part"} <= set(parts)
    assert verify(config).ok, verify(config).problems
    assert await all_seqs(store) == list(range(1, count + 1))

    store.run_compaction()
    assert {f.kind for f in store.index.files()} == {"compacted"}
    assert verify(config).ok
    assert await all_seqs(store) == list(range(1, count + 1))


@pytest.mark.parametrize("job", ["snapshots", "rollups"])
@pytest.mark.parametrize("how", ["fsync", "rename"])
def test_failed_snapshots_and_rollups_leave_no_temp_file_and_are_redone(
    store: TickStore, clock: ManualClock, monkeypatch: pytest.MonkeyPatch, job: str, how: str
) -> None:
    store.append_batch_sync(CONTRACT, "last", [trade(T0_NS + seconds(i), i) for i in range(50)])
    depth = [level("bid", "insert", 99.0 - i, 10.0 + i, T0_NS + seconds(i)) for i in range(5)]
    store.append_batch_sync(CONTRACT, "depth", depth)
    clock.advance(3 * HOUR)
    store.run_archival()
    where = str(store.layout.snapshot_dir if job == "snapshots" else store.layout.rollup_dir)
    run = store.run_snapshots if job == "snapshots" else store.run_rollups
    with monkeypatch.context() as mp:
        (failing_fsync if how == "fsync" else failing_replace)(mp, where)
        with pytest.raises(StorageError):
            run()
    assert temp_files(store) == []
    done = run()
    assert (done.written if job == "snapshots" else done) >= 1  # type: ignore[union-attr]
    assert temp_files(store) == []
