"""The SQLite catalog: the tick_archives table the issue specifies, WAL mode and range planning."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from ib_stream.clock import ManualClock
from ib_stream.domain import StreamKey, TickType
from ib_stream.settings import StorageConfig
from ib_stream.storage import PartitionIndex, TickStore
from ib_stream.store.index import ArchiveFile
from tests.conftest import CONTRACT, T0_NS, seconds, trade

LAST = StreamKey(CONTRACT, TickType.LAST)
ISSUE_COLUMNS = {
    "contract_id",
    "tick_type",
    "start_time",
    "end_time",
    "first_seq",
    "last_seq",
    "file_path",
    "tick_count",
    "file_size_bytes",
    "compression_ratio",
    "checksum",
    "created_at",
}


def row(start: int, end: int, first: int, last: int, name: str, stream: StreamKey = LAST) -> ArchiveFile:
    return ArchiveFile(
        contract_id=stream.contract_id,
        tick_type=stream.tick_type.value,
        start_time=start,
        end_time=end,
        first_seq=first,
        last_seq=last,
        file_path=name,
        tick_count=last - first + 1,
        file_size_bytes=100,
        jsonl_bytes=400,
        compression_ratio=4.0,
        checksum="0" * 64,
        partition_start=start - start % seconds(3600),
        kind="part",
        created_at="2025-01-10T14:00:00Z",
    )


@pytest.fixture
def index(tmp_path: Path) -> PartitionIndex:
    return PartitionIndex(tmp_path / "index.db")


def test_tick_archives_has_the_issue_columns(index: PartitionIndex) -> None:
    with closing(sqlite3.connect(index.path)) as db:
        columns = {r[1] for r in db.execute("PRAGMA table_info(tick_archives)")}
    assert columns >= ISSUE_COLUMNS


def test_range_index_exists_on_contract_type_start_end(index: PartitionIndex) -> None:
    with closing(sqlite3.connect(index.path)) as db:
        indexed = {
            name: [r[2] for r in db.execute(f"PRAGMA index_info({name})")]
            for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='tick_archives'")
        }
    assert ["contract_id", "tick_type", "start_time", "end_time"] in indexed.values()


def test_catalog_is_in_wal_mode(index: PartitionIndex) -> None:
    index.register([row(T0_NS, T0_NS + 1, 1, 2, "a.parquet")])
    with closing(sqlite3.connect(index.path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_data_statistics_table_has_the_issue_columns(index: PartitionIndex) -> None:
    with closing(sqlite3.connect(index.path)) as db:
        columns = {r[1] for r in db.execute("PRAGMA table_info(data_statistics)")}
    assert {"total_ticks", "unique_prices", "total_volume", "vwap", "high_price", "low_price"} <= columns


def test_plan_returns_only_files_overlapping_the_range(index: PartitionIndex) -> None:
    hour = seconds(3600)
    index.register(
        [
            row(T0_NS, T0_NS + hour - 1, 1, 10, "h14.parquet"),
            row(T0_NS + hour, T0_NS + 2 * hour - 1, 11, 20, "h15.parquet"),
            row(T0_NS + 2 * hour, T0_NS + 3 * hour - 1, 21, 30, "h16.parquet"),
            row(T0_NS, T0_NS + hour, 1, 5, "other.parquet", StreamKey(CONTRACT, TickType.BID_ASK)),
        ]
    )

    def planned(start: int, end: int, below: int | None = None) -> list[str]:
        return [f.file_path for f in index.plan(LAST, start, end, below)]

    assert planned(T0_NS + hour, T0_NS + 2 * hour) == ["h15.parquet"]
    assert planned(T0_NS + hour - 1, T0_NS + hour + 1) == ["h14.parquet", "h15.parquet"]  # max ts is inclusive
    assert planned(T0_NS + 2 * hour - 1, T0_NS + 2 * hour) == ["h15.parquet"]  # end is exclusive
    assert planned(T0_NS - hour, T0_NS) == []
    assert planned(T0_NS + 3 * hour, T0_NS + 4 * hour) == []
    assert planned(T0_NS, T0_NS + 3 * hour, below=11) == ["h14.parquet"]  # above the hot watermark: not read


def test_register_advances_the_archived_watermark_and_never_lowers_it(index: PartitionIndex) -> None:
    index.register([row(T0_NS, T0_NS, 1, 10, "a.parquet")], {LAST: 10})
    index.register([], {LAST: 4})
    assert index.archived_seqs() == {LAST: 10}
    assert index.last_seqs() == {LAST: 10}


def test_replace_swaps_files_and_retires_the_old(index: PartitionIndex) -> None:
    index.register([row(T0_NS, T0_NS + 5, 1, 5, "a.parquet"), row(T0_NS + 6, T0_NS + 9, 6, 9, "b.parquet")])
    index.replace(row(T0_NS, T0_NS + 9, 1, 9, "c.parquet"), ["a.parquet", "b.parquet"], retired_at=T0_NS)
    assert [f.file_path for f in index.files()] == ["c.parquet"]
    assert sorted(index.retired()) == [("a.parquet", T0_NS), ("b.parquet", T0_NS)]


async def test_store_catalog_rows_hold_the_issue_columns(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    await store.append_batch(CONTRACT, "last", [trade(T0_NS + seconds(i), i) for i in range(3)])
    clock.advance(900)
    store.run_archival()
    with closing(sqlite3.connect(config.index_file)) as db:
        db.row_factory = sqlite3.Row
        (stored,) = db.execute("SELECT * FROM tick_archives").fetchall()
    assert stored["contract_id"] == CONTRACT
    assert stored["tick_type"] == "last"
    assert (stored["start_time"], stored["end_time"]) == (T0_NS, T0_NS + seconds(2))
    assert (stored["first_seq"], stored["last_seq"], stored["tick_count"]) == (1, 3, 3)
    assert stored["file_path"].startswith(f"contract_id={CONTRACT}/tick_type=last/date=2025-01-10/hour=14/")
    assert stored["file_size_bytes"] > 0
    assert stored["compression_ratio"] > 0
    assert len(stored["checksum"]) == 64
    assert stored["created_at"].endswith("Z")
