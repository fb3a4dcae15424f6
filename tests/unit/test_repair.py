"""Catalog repair: `verify` names every mismatch between files and catalog, and `rebuild`
recreates the catalog from the archive files alone, including after interrupted compactions.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ib_stream.clock import ManualClock
from ib_stream.settings import StorageConfig
from ib_stream.storage import StorageQuery, TickStore
from ib_stream.store.repair import Problem, VerifyReport, rebuild, verify
from tests.conftest import CONTRACT, T0_NS, seconds, trade

HOUR = 3600
EVERYTHING = (T0_NS - seconds(86_400), T0_NS + seconds(86_400))


async def seed(store: TickStore, clock: ManualClock, hours: int = 2) -> None:
    """Ten trades in every 15-minute segment of `hours` hours from the clock, then archived."""
    for k in range(4 * hours):
        base = clock.now_ns()
        await store.append_batch(CONTRACT, "last", [trade(base + seconds(i * 20), k * 10 + i) for i in range(10)])
        clock.advance(15 * 60)
    clock.advance(1)
    store.run_archival()


async def everything(store: TickStore) -> pd.DataFrame:
    return await StorageQuery(store.engine).query_range(CONTRACT, "last", *EVERYTHING)


def problems(report: VerifyReport) -> set[tuple[str, str]]:
    return {(p.kind, p.path) for p in report.problems}


def drop_catalog(config: StorageConfig) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{config.index_file}{suffix}").unlink(missing_ok=True)


@contextlib.contextmanager
def open_catalog(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain SQLite connection to the catalog, committed and closed on exit."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        yield db


def comparable_rows(config: StorageConfig) -> set[tuple[object, ...]]:
    """Catalog rows without created_at (the time the row was written, not a property of the file)."""
    with open_catalog(config.index_file) as db:
        columns = [r[1] for r in db.execute("PRAGMA table_info(tick_archives)") if r[1] != "created_at"]
        return set(db.execute(f"SELECT {', '.join(columns)} FROM tick_archives").fetchall())


def statistics_rows(config: StorageConfig) -> set[tuple[object, ...]]:
    with open_catalog(config.index_file) as db:
        return set(db.execute("SELECT * FROM data_statistics").fetchall())


def column_data_offset(path: Path, column: str) -> int:
    metadata = pq.ParquetFile(path).metadata
    index = metadata.schema.to_arrow_schema().names.index(column)
    return int(metadata.row_group(0).column(index).data_page_offset)


def break_footer_text(path: Path, column: str = "exchange") -> None:
    """Make a column name in the footer invalid UTF-8 (same size, readable magic, broken schema)."""
    data = bytearray(path.read_bytes())
    footer_start = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    at = data.index(column.encode(), footer_start)
    data[at] = 0x91
    path.write_bytes(bytes(data))


@pytest.fixture
async def seeded(store: TickStore, clock: ManualClock) -> TickStore:
    await seed(store, clock)
    store.run_compaction()
    await seed(store, clock, hours=1)  # hour 16: parts only
    return store


# ---- verify ------------------------------------------------------------------------------------------


async def test_healthy_store_verifies_clean(seeded: TickStore, config: StorageConfig) -> None:
    report = verify(config)
    assert report.ok, report.problems
    assert report.files_checked == len(seeded.index.files()) == 6


async def test_missing_file_is_reported(seeded: TickStore, config: StorageConfig) -> None:
    victim = seeded.index.files()[0].file_path
    (config.archive_dir / victim).unlink()
    report = verify(config)
    assert not report.ok
    assert problems(report) == {("missing", victim)}


async def test_extra_file_is_reported(seeded: TickStore, config: StorageConfig) -> None:
    source = seeded.index.files()[-1].file_path
    extra = str(Path(source).with_name("part-000000009999-000000009999.parquet"))
    shutil.copy(config.archive_dir / source, config.archive_dir / extra)
    report = verify(config)
    assert not report.ok
    assert problems(report) == {("extra", extra)}


async def test_grown_file_is_reported_as_a_size_mismatch(seeded: TickStore, config: StorageConfig) -> None:
    victim = seeded.index.files()[1].file_path
    with open(config.archive_dir / victim, "ab") as handle:
        handle.write(b"\0" * 17)
    report = verify(config)
    assert not report.ok
    assert ("size", victim) in problems(report)
    assert {path for _, path in problems(report)} == {victim}


async def test_wrong_row_count_is_reported(seeded: TickStore, config: StorageConfig) -> None:
    victim = seeded.index.files()[2].file_path
    with open_catalog(config.index_file) as db:
        db.execute("UPDATE tick_archives SET tick_count = tick_count + 1 WHERE file_path = ?", (victim,))
    report = verify(config)
    assert not report.ok
    assert problems(report) == {("row_count", victim)}


async def test_flipped_byte_is_reported_as_a_checksum_mismatch(seeded: TickStore, config: StorageConfig) -> None:
    victim = seeded.index.files()[3].file_path
    path = config.archive_dir / victim
    data = bytearray(path.read_bytes())
    data[column_data_offset(path, "price") + 3] ^= 0xFF  # inside the column data: size and footer stay intact
    path.write_bytes(bytes(data))
    report = verify(config)
    assert not report.ok
    assert problems(report) == {("checksum", victim)}
    assert verify(config, checksums=False).ok  # the cheap check cannot see it


async def test_corrupt_footer_is_reported_not_raised(seeded: TickStore, config: StorageConfig) -> None:
    victim = seeded.index.files()[0].file_path
    break_footer_text(config.archive_dir / victim)
    report = verify(config)
    assert not report.ok
    assert {path for _, path in problems(report)} == {victim}
    assert "unreadable" in {kind for kind, _ in problems(report)}


async def test_every_problem_is_reported_at_once(seeded: TickStore, config: StorageConfig) -> None:
    files = [f.file_path for f in seeded.index.files()]
    (config.archive_dir / files[0]).unlink()
    with open_catalog(config.index_file) as db:
        db.execute("UPDATE tick_archives SET tick_count = 0 WHERE file_path = ?", (files[1],))
    with open(config.archive_dir / files[2], "ab") as handle:
        handle.write(b"x")
    kinds = {p.kind for p in verify(config).problems}
    assert {"missing", "row_count", "size"} <= kinds


async def test_retired_files_waiting_for_deletion_are_not_extra(tmp_path: Path, clock: ManualClock) -> None:
    config = StorageConfig(
        data_root=tmp_path / "root", fsync_interval_ms=1, compaction_delay_seconds=0, retired_file_grace_seconds=600
    )
    with TickStore(config, clock) as store:
        await seed(store, clock)
        store.run_compaction()
        assert store.index.retired() != []
        assert verify(config).ok


# ---- rebuild -------------------------------------------------------------------------------------------


async def test_rebuild_recreates_the_catalog_from_the_files(
    seeded: TickStore, config: StorageConfig, clock: ManualClock
) -> None:
    expected = await everything(seeded)
    rows, statistics, archived = comparable_rows(config), statistics_rows(config), seeded.index.archived_seqs()
    seeded.close()
    drop_catalog(config)
    report = rebuild(config)
    assert (report.files, report.ticks, report.superseded, report.unreadable) == (6, 120, [], [])
    assert comparable_rows(config) == rows
    assert statistics_rows(config) == statistics
    assert verify(config).ok
    with TickStore(config, clock) as reopened:
        assert reopened.index.archived_seqs() == archived
        pd.testing.assert_frame_equal(await everything(reopened), expected)
        clock.advance(4 * HOUR)
        reopened.run_archival()  # hot tier evicted: the answer now comes from the rebuilt catalog alone
        pd.testing.assert_frame_equal(await everything(reopened), expected)


async def test_rebuild_after_a_crash_between_compaction_commit_and_part_deletion(
    tmp_path: Path, clock: ManualClock
) -> None:
    config = StorageConfig(
        data_root=tmp_path / "root", fsync_interval_ms=1, compaction_delay_seconds=0, retired_file_grace_seconds=600
    )
    with TickStore(config, clock) as store:
        await seed(store, clock)
        store.run_compaction()
        parts = sorted(path for path, _ in store.index.retired())
        clock.advance(4 * HOUR)
        store.run_archival()
        expected = await everything(store)
    assert len(parts) == 8
    assert all((config.archive_dir / p).exists() for p in parts)  # compacted files and their parts side by side
    drop_catalog(config)
    report = rebuild(config)
    assert report.superseded == parts
    assert report.files == 2
    assert sorted(p for p, _ in PartitionIndexView(config).retired()) == parts
    assert verify(config).ok
    with TickStore(config, clock) as reopened:
        frame = await everything(reopened)
        assert frame["seq"].is_unique
        pd.testing.assert_frame_equal(frame, expected)


async def test_parts_retired_by_rebuild_are_reaped_after_the_grace(tmp_path: Path, clock: ManualClock) -> None:
    config = StorageConfig(
        data_root=tmp_path / "root", fsync_interval_ms=1, compaction_delay_seconds=0, retired_file_grace_seconds=600
    )
    with TickStore(config, clock) as store:
        await seed(store, clock)
        store.run_compaction()
    drop_catalog(config)
    parts = rebuild(config, clock=clock).superseded
    assert len(parts) == 8
    with TickStore(config, clock) as reopened:
        clock.advance(601)
        assert reopened.run_maintenance() == 8
    assert not any((config.archive_dir / p).exists() for p in parts)


async def test_rebuild_names_unreadable_files_and_skips_them(seeded: TickStore, config: StorageConfig) -> None:
    partition = Path(seeded.index.files()[0].file_path).parent
    junk = (partition / "part-000000000500-000000000501.parquet").as_posix()
    (config.archive_dir / junk).write_bytes(b"not parquet at all")
    stray = "contract_id=1/stray.parquet"
    (config.archive_dir / "contract_id=1").mkdir()
    shutil.copy(config.archive_dir / seeded.index.files()[0].file_path, config.archive_dir / stray)
    seeded.close()
    drop_catalog(config)
    report = rebuild(config)
    assert {(p.kind, p.path) for p in report.unreadable} == {("unreadable", junk), ("unreadable", stray)}
    assert all(isinstance(p, Problem) for p in report.unreadable)
    assert report.files == 6


async def test_rebuild_ignores_an_orphaned_compaction_superseded_by_a_later_one(
    store: TickStore, clock: ManualClock, config: StorageConfig, tmp_path: Path
) -> None:
    await seed(store, clock, hours=1)
    partition = config.archive_dir / Path(store.index.files()[0].file_path).parent
    store.close()
    # A compaction crashes after renaming its output, before the catalog swap: produce the very
    # file it writes by compacting a copy of the data root, and leave it beside the parts.
    twin = StorageConfig(
        data_root=tmp_path / "twin", fsync_interval_ms=1, compaction_delay_seconds=0, retired_file_grace_seconds=0
    )
    shutil.copytree(config.data_root, twin.data_root)
    with TickStore(twin, clock) as other:
        other.run_compaction()
        (compacted,) = other.index.files()
    orphan = partition / Path(compacted.file_path).name
    shutil.copy(twin.archive_dir / compacted.file_path, orphan)
    with TickStore(config, clock) as restarted:
        # After the restart a late tick (an IB backfill) lands in that hour before compaction runs again.
        await restarted.append_batch(CONTRACT, "last", [trade(T0_NS + seconds(5), 99)])
        clock.advance(15 * 60)
        restarted.run_archival()
        restarted.run_compaction()
        assert len(await everything(restarted)) == 41
    # Compaction of that partition removed the interrupted compaction's output ...
    assert not orphan.exists()
    # ... but a rebuild must cope with one too (say the crash came after that compaction).
    shutil.copy(twin.archive_dir / compacted.file_path, orphan)
    assert ("extra", orphan.relative_to(config.archive_dir).as_posix()) in problems(verify(config))
    drop_catalog(config)
    assert rebuild(config).ticks == 41
    with TickStore(config, clock) as rebuilt:
        clock.advance(4 * HOUR)
        rebuilt.run_archival()  # hot tier evicted: the answer comes from the rebuilt catalog
        frame = await everything(rebuilt)
    assert frame["seq"].is_unique, "rebuild registered overlapping files"
    assert len(frame) == 41


class PartitionIndexView:
    """Read-only look at a rebuilt catalog without opening a store."""

    def __init__(self, config: StorageConfig) -> None:
        self.path = config.index_file

    def retired(self) -> list[tuple[str, int]]:
        with open_catalog(self.path) as db:
            return db.execute("SELECT file_path, retired_at FROM retired_files").fetchall()
