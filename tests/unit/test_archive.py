"""The Parquet archive: partition layout, splitting by event hour, idempotent and crash-safe
archival, compaction, file format, losslessness, Hive compatibility, retention and statistics.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import struct
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from ib_stream.clock import ManualClock
from ib_stream.domain import StreamKey, TickType
from ib_stream.settings import StorageConfig
from ib_stream.storage import StorageQuery, TickStore
from ib_stream.store.layout import Partition
from ib_stream.store.repair import verify
from ib_stream.store.schema import read_segment_file
from tests.conftest import CONTRACT, T0_NS, quote, seconds, trade

LAST = StreamKey(CONTRACT, TickType.LAST)
QUOTES = StreamKey(CONTRACT, TickType.BID_ASK)
HOUR = 3600
PARTITION_14 = f"contract_id={CONTRACT}/tick_type=last/date=2025-01-10/hour=14"
PARTITION_15 = f"contract_id={CONTRACT}/tick_type=last/date=2025-01-10/hour=15"


def archive_files(config: StorageConfig) -> list[str]:
    root = config.archive_dir
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.parquet")) if root.is_dir() else []


def file_bytes(config: StorageConfig) -> dict[str, bytes]:
    return {name: (config.archive_dir / name).read_bytes() for name in archive_files(config)}


def catalog_paths(store: TickStore) -> list[str]:
    return sorted(f.file_path for f in store.index.files())


async def fill_hour(store: TickStore, clock: ManualClock, per_segment: int = 10, segments: int = 4) -> None:
    """Append `per_segment` trades in each 15-minute segment of the hour starting at the clock."""
    for k in range(segments):
        base = clock.now_ns()
        await store.append_batch(
            CONTRACT, "last", [trade(base + seconds(i), k * per_segment + i) for i in range(per_segment)]
        )
        clock.advance(15 * 60)


async def all_trades(
    store: TickStore, start: int = T0_NS - seconds(10 * 86_400), end: int | None = None
) -> pd.DataFrame:
    return await StorageQuery(store.engine).query_range(CONTRACT, "last", start, end or T0_NS + seconds(10 * 86_400))


# ---- archival --------------------------------------------------------------------------------------


async def test_sealed_segment_becomes_a_part_in_its_hive_partition(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    await store.append_batch(CONTRACT, "last", [trade(T0_NS + seconds(i), i) for i in range(5)])
    assert store.run_archival().segments == 0  # still open
    clock.advance(15 * 60)
    report = store.run_archival()
    assert (report.segments, report.ticks, report.files_written) == (1, 5, 1)
    assert archive_files(config) == [f"{PARTITION_14}/part-000000000001-000000000005.parquet"]
    assert catalog_paths(store) == archive_files(config)
    assert store.index.archived_seqs() == {LAST: 5}


async def test_segment_spanning_two_hours_is_split_by_event_time(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    clock.advance(50 * 60)  # segment 14:45
    ticks = [trade(T0_NS + seconds(3598), 0), trade(T0_NS + seconds(3599), 1), trade(T0_NS + seconds(3601), 2)]
    await store.append_batch(CONTRACT, "last", ticks)
    clock.advance(15 * 60)
    store.run_archival()
    assert archive_files(config) == [
        f"{PARTITION_14}/part-000000000001-000000000002.parquet",
        f"{PARTITION_15}/part-000000000003-000000000003.parquet",
    ]
    rows = {f.file_path.split("/")[3]: (f.tick_count, f.first_seq, f.last_seq) for f in store.index.files()}
    assert rows == {"hour=14": (2, 1, 2), "hour=15": (1, 3, 3)}


async def test_late_ticks_land_in_their_own_event_hour(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    await store.append_batch(CONTRACT, "last", [trade(T0_NS - seconds(2 * 86_400 + 1800), 0), trade(T0_NS, 1)])
    clock.advance(15 * 60)
    store.run_archival()
    assert [p.split("/")[2:4] for p in archive_files(config)] == [
        ["date=2025-01-08", "hour=13"],
        ["date=2025-01-10", "hour=14"],
    ]


async def test_rerunning_archival_changes_nothing(store: TickStore, clock: ManualClock, config: StorageConfig) -> None:
    await fill_hour(store, clock)
    store.run_archival()
    before, catalog = file_bytes(config), store.index.files()
    again = store.run_archival()
    assert (again.segments, again.files_written) == (0, 0)
    assert file_bytes(config) == before
    assert store.index.files() == catalog
    frame = await all_trades(store)
    assert list(frame["seq"]) == list(range(1, 41))


async def test_crash_after_part_rename_before_catalog_commit_is_repaired_by_rerunning(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    await store.append_batch(CONTRACT, "last", [trade(T0_NS + seconds(i), i) for i in range(8)])
    clock.advance(15 * 60)
    segment = store.buffer.sealed_segments(LAST)[0]
    table, lengths = read_segment_file(segment.path, TickType.LAST)
    # What a crash leaves: the part is renamed into place but the catalog never heard of it.
    store.archiver._write_part(Partition(LAST, T0_NS, T0_NS + seconds(HOUR)), table, int(lengths.sum()))
    assert archive_files(config) == [f"{PARTITION_14}/part-000000000001-000000000008.parquet"]
    assert store.index.files() == []
    store.run_archival()
    assert archive_files(config) == [f"{PARTITION_14}/part-000000000001-000000000008.parquet"]
    assert catalog_paths(store) == archive_files(config)
    assert store.index.files()[0].tick_count == 8
    frame = await all_trades(store)
    assert list(frame["seq"]) == list(range(1, 9))


async def test_temp_files_of_an_interrupted_write_are_removed_on_open(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    await store.append_batch(CONTRACT, "last", [trade(T0_NS)])
    clock.advance(15 * 60)
    store.run_archival()
    leftover = config.archive_dir / PARTITION_14 / ".part-000000000002-000000000002.parquet.tmp-4242"
    leftover.write_bytes(b"PAR1 half written")
    store.close()
    reopened = TickStore(config, clock).open()
    try:
        assert reopened.temp_files_removed == 1
        assert not leftover.exists()
    finally:
        reopened.close()


# ---- compaction ------------------------------------------------------------------------------------


async def test_compaction_makes_one_file_per_closed_hour(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    await fill_hour(store, clock)  # 14:00 .. 14:45, clock now 15:00
    await fill_hour(store, clock, segments=2)  # 15:00, 15:15: hour 15 still open
    store.run_archival()
    assert len(archive_files(config)) == 6
    report = store.run_compaction()
    assert (report.files_written, report.files_removed, report.ticks) == (1, 4, 40)
    files = archive_files(config)
    assert files == [
        f"{PARTITION_14}/hour-000000000001-000000000040-40.parquet",
        f"{PARTITION_15}/part-000000000041-000000000050.parquet",
        f"{PARTITION_15}/part-000000000051-000000000060.parquet",
    ]
    assert catalog_paths(store) == files
    frame = await all_trades(store)
    assert list(frame["seq"]) == list(range(1, 61))


async def test_compaction_waits_for_the_delay_after_the_hour_closes(tmp_path: Path, clock: ManualClock) -> None:
    config = StorageConfig(
        data_root=tmp_path / "root", fsync_interval_ms=1, compaction_delay_seconds=120, retired_file_grace_seconds=0
    )
    with TickStore(config, clock) as store:
        await fill_hour(store, clock)
        store.run_archival()
        clock.set(T0_NS + seconds(HOUR + 119))
        assert store.run_compaction().files_written == 0
        clock.set(T0_NS + seconds(HOUR + 120))
        assert store.run_compaction().files_written == 1


async def test_compacted_parts_are_retired_then_deleted_after_the_grace(tmp_path: Path, clock: ManualClock) -> None:
    config = StorageConfig(
        data_root=tmp_path / "root", fsync_interval_ms=1, compaction_delay_seconds=0, retired_file_grace_seconds=60
    )
    with TickStore(config, clock) as store:
        await fill_hour(store, clock)
        store.run_archival()
        parts = archive_files(config)
        store.run_compaction()
        retired = sorted(path for path, _ in store.index.retired())
        assert retired == parts
        assert all(f.kind == "compacted" for f in store.index.files())
        assert set(parts) < set(archive_files(config))  # still on disk for readers in flight
        assert store.run_maintenance() == 0
        clock.advance(61)
        assert store.run_maintenance() == 4
        assert store.index.retired() == []
        assert (
            archive_files(config)
            == catalog_paths(store)
            == [f"{PARTITION_14}/hour-000000000001-000000000040-40.parquet"]
        )


async def test_a_retired_file_is_kept_while_a_reader_started_before_retirement_is_in_flight(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    await fill_hour(store, clock)
    store.run_archival()
    parts = archive_files(config)
    with store.index.readers.reading():
        store.run_compaction()
        assert set(parts) <= set(archive_files(config))
    store.run_maintenance()
    assert set(parts).isdisjoint(archive_files(config))


async def test_crash_after_compacted_rename_before_commit_is_repaired_by_rerunning(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    await fill_hour(store, clock)
    store.run_archival()
    parts = archive_files(config)
    # Simulate the crash: write the compacted file where compaction would, without the catalog swap.
    shutil.copy(
        config.archive_dir / parts[0], config.archive_dir / PARTITION_14 / "hour-000000000001-000000000040-40.parquet"
    )
    store.run_compaction()
    assert archive_files(config) == [f"{PARTITION_14}/hour-000000000001-000000000040-40.parquet"]
    assert store.index.files()[0].tick_count == 40
    frame = await all_trades(store)
    assert list(frame["seq"]) == list(range(1, 41))


async def test_stray_output_of_an_interrupted_compaction_goes_with_its_expired_partition(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    await fill_hour(store, clock)
    store.run_archival()
    stray = config.archive_dir / PARTITION_14 / "hour-000000000001-000000000040-40.parquet"
    shutil.copy(config.archive_dir / archive_files(config)[0], stray)  # compaction crashed before its swap
    clock.advance(366 * 24 * HOUR)  # past archive retention before compaction ever ran again
    store.run_retention()
    store.run_maintenance()
    assert not stray.exists()
    assert archive_files(config) == []
    assert verify(config).ok


async def test_late_part_in_a_compacted_hour_is_compacted_again(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    await fill_hour(store, clock)
    store.run_archival()
    store.run_compaction()
    await store.append_batch(CONTRACT, "last", [trade(T0_NS + seconds(1234), 99)])  # late tick for hour 14
    clock.advance(15 * 60)
    store.run_archival()
    assert len(store.index.partition_files(LAST, T0_NS)) == 2
    store.run_compaction()
    assert archive_files(config) == [f"{PARTITION_14}/hour-000000000001-000000000041-41.parquet"]
    frame = await all_trades(store)
    assert sorted(frame["seq"]) == list(range(1, 42))
    assert frame["timestamp"].is_monotonic_increasing


# ---- file format -------------------------------------------------------------------------------------


async def test_files_are_sorted_zstd_with_statistics(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    base = T0_NS + seconds(10)
    shuffled = [trade(base + seconds((i * 7) % 23), i) for i in range(23)]  # event time out of arrival order
    shuffled.append(trade(base, 99))  # shares a ts with seq 1: order is then by seq
    await store.append_batch(CONTRACT, "last", shuffled)
    clock.advance(15 * 60)
    await fill_hour(store, clock, segments=1)
    clock.advance(HOUR)
    store.run_archival()
    store.run_compaction()
    (path,) = archive_files(config)
    parquet = pq.ParquetFile(config.archive_dir / path)
    table = parquet.read()
    keys = list(zip(table.column("ts").cast(pa.int64()).to_pylist(), table.column("seq").to_pylist(), strict=True))
    assert keys == sorted(keys)
    names = parquet.schema_arrow.names
    for group in range(parquet.metadata.num_row_groups):
        row_group = parquet.metadata.row_group(group)
        for column in range(row_group.num_columns):
            assert row_group.column(column).compression == "ZSTD"
        for name in ("ts", "seq"):
            stats = row_group.column(names.index(name)).statistics
            assert stats is not None and stats.has_min_max
        assert [c.column_index for c in row_group.sorting_columns] == [names.index("ts"), names.index("seq")]
    ts_stats = parquet.metadata.row_group(0).column(names.index("ts")).statistics
    assert ts_stats.min == pd.Timestamp(base, unit="ns", tz="UTC")


TRICKY_FLOATS = [0.1 + 0.2, 5e-324, 1.7976931348623157e308, 100.00000000000001, 1 / 3, 2.0**-1074 * 3, 0.0]


async def test_archive_is_lossless(store: TickStore, clock: ManualClock, config: StorageConfig) -> None:
    ticks: list[dict[str, Any]] = []
    for i, value in enumerate(TRICKY_FLOATS):
        ticks.append(
            trade(
                T0_NS + seconds(i) + 123,
                price=value,
                size=TRICKY_FLOATS[-1 - i],
                exchange=["NASDAQ", "", "ÉCHANGE ✓", 'a"b\\c\n'][i % 4],
                conditions=" ".join("@" * i),
                past_limit=i % 2 == 0,
                unreported=i % 3 == 0,
                side=[None, 1, -1][i % 3],
                source=f"src-{i}",
            )
        )
    await store.append_batch(CONTRACT, "last", ticks, source="unused")
    clock.advance(2 * HOUR)
    store.run_archival()
    table = pq.read_table(config.archive_dir / archive_files(config)[0]).to_pylist()
    assert len(table) == len(ticks)
    for row, tick in zip(table, ticks, strict=True):
        for name, value in tick.items():
            got = row[name]
            if name == "ts":
                got = pd.Timestamp(got).value
            if isinstance(value, float):
                assert struct.pack("<d", got) == struct.pack("<d", value), name
            else:
                assert got == value, name
            assert row["recv_ts"] == pd.Timestamp(T0_NS, unit="ns", tz="UTC")


async def test_archive_keeps_every_quote_field(store: TickStore, clock: ManualClock, config: StorageConfig) -> None:
    ticks = [quote(T0_NS + i, i, bid_past_low=i == 1, ask_past_high=i == 2) for i in range(4)]
    await store.append_batch(CONTRACT, "BidAsk", ticks)
    clock.advance(HOUR)
    store.run_archival()
    rows = pq.read_table(config.archive_dir / archive_files(config)[0]).to_pylist()
    assert [r["bid_past_low"] for r in rows] == [False, True, False, False]
    assert [r["ask_past_high"] for r in rows] == [False, False, True, False]
    assert [r["bid_price"] for r in rows] == [t["bid_price"] for t in ticks]


async def test_hive_partitioned_dataset_reads_the_archive_as_is(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    await fill_hour(store, clock)
    await fill_hour(store, clock, segments=1)
    await store.append_batch(CONTRACT, "BidAsk", [quote(clock.now_ns(), i) for i in range(5)])
    clock.advance(2 * HOUR)
    store.run_archival()
    store.run_compaction()
    table = ds.dataset(config.archive_dir, format="parquet", partitioning="hive").to_table(
        columns=["seq", "contract_id", "tick_type", "date", "hour"], filter=ds.field("tick_type") == "last"
    )
    assert table.num_rows == 50
    assert set(table.column("contract_id").to_pylist()) == {CONTRACT}
    assert sorted(table.column("seq").to_pylist()) == list(range(1, 51))
    assert sorted(set(zip(table.column("date").to_pylist(), table.column("hour").to_pylist(), strict=True))) == [
        ("2025-01-10", 14),
        ("2025-01-10", 15),
    ]


# ---- retention ---------------------------------------------------------------------------------------


async def test_buffer_retention_deletes_only_archived_old_segments(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    await store.append_batch(CONTRACT, "last", [trade(T0_NS)])
    clock.advance(15 * 60)
    store.run_archival()
    await store.append_batch(CONTRACT, "last", [trade(clock.now_ns())])  # segment 14:15, never archived
    clock.advance(25 * HOUR)
    segments = config.buffer_dir / str(CONTRACT) / "last"
    store.run_retention()
    assert sorted(p.name for p in segments.iterdir()) == ["20250110T1415.jsonl"]
    store.run_archival()
    store.run_retention()
    assert list(segments.iterdir()) == []
    frame = await all_trades(store)
    assert list(frame["seq"]) == [1, 2]


async def test_buffer_retention_keeps_young_archived_segments(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    await store.append_batch(CONTRACT, "last", [trade(T0_NS)])
    clock.advance(23 * HOUR)
    store.run_archival()
    store.run_retention()
    assert [p.name for p in (config.buffer_dir / str(CONTRACT) / "last").iterdir()] == ["20250110T1400.jsonl"]


async def test_archive_retention_deletes_old_partitions(tmp_path: Path, clock: ManualClock) -> None:
    config = StorageConfig(
        data_root=tmp_path / "root", fsync_interval_ms=1, archive_retention_days=2, retired_file_grace_seconds=0
    )
    with TickStore(config, clock) as store:
        old, recent = T0_NS - seconds(3 * 86_400), T0_NS - seconds(86_400)
        await store.append_batch(CONTRACT, "last", [trade(old, 0), trade(recent, 1), trade(T0_NS, 2)])
        clock.advance(15 * 60)
        store.run_archival()
        assert {s.date for s in store.index.statistics()} == {"2025-01-07", "2025-01-09", "2025-01-10"}
        report = store.run_retention()
        assert report.files_removed == 1
        assert [p.split("/")[2] for p in archive_files(config)] == ["date=2025-01-09", "date=2025-01-10"]
        assert [p.split("/")[2] for p in catalog_paths(store)] == ["date=2025-01-09", "date=2025-01-10"]
        assert {s.date for s in store.index.statistics()} == {"2025-01-09", "2025-01-10"}
        assert not (config.archive_dir / f"contract_id={CONTRACT}/tick_type=last/date=2025-01-07").exists()
        clock.advance(3 * 3600)  # past the hot window: the query reads the archive only
        store.run_archival()
        frame = await all_trades(store)
        assert list(frame["seq"]) == [2, 3]


# ---- statistics --------------------------------------------------------------------------------------


def expected_statistics(frame: pd.DataFrame, prices: list[str], trades: bool) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    frame = frame.assign(date=pd.to_datetime(frame["ts"], unit="ns", utc=True).dt.strftime("%Y-%m-%d"))
    for date, day in frame.groupby("date"):
        values = pd.concat([day[c] for c in prices])
        values = values[values > 0] if not trades else values
        row: dict[str, Any] = {
            "total_ticks": len(day),
            "unique_prices": values.nunique(),
            "high_price": values.max(),
            "low_price": values.min(),
        }
        if trades:
            row["total_volume"] = day["size"].sum()
            row["vwap"] = (day["price"] * day["size"]).sum() / day["size"].sum()
        out[str(date)] = row
    return out


def assert_statistics_match(store: TickStore, stream: StreamKey, expected: dict[str, dict[str, Any]]) -> None:
    rows = {s.date: s for s in store.index.statistics(stream)}
    assert sorted(rows) == sorted(expected)
    for date, want in expected.items():
        got = rows[date]
        for name, value in want.items():
            assert getattr(got, name) == pytest.approx(value, rel=1e-12), (date, name)


async def test_daily_trade_statistics_equal_a_pandas_computation(store: TickStore, clock: ManualClock) -> None:
    rng = np.random.default_rng(7)
    midnight = T0_NS + seconds(10 * HOUR)  # 2025-01-11 00:00 UTC
    stamps = midnight + rng.integers(-2 * HOUR, 2 * HOUR, 500) * 1_000_000_000
    ticks = [
        trade(int(ts), price=float(np.round(rng.uniform(99, 101), 2)), size=float(rng.integers(1, 500)))
        for ts in stamps
    ]
    await store.append_batch(CONTRACT, "last", ticks)
    clock.advance(15 * 60)
    store.run_archival()
    frame = pd.DataFrame(ticks)
    assert_statistics_match(store, LAST, expected_statistics(frame, ["price"], trades=True))
    store.run_compaction()
    store.run_maintenance()
    assert_statistics_match(store, LAST, expected_statistics(frame, ["price"], trades=True))


async def test_daily_quote_statistics_equal_a_pandas_computation(store: TickStore, clock: ManualClock) -> None:
    ticks = [quote(T0_NS + seconds(i * 60), i) for i in range(200)]
    ticks.append(quote(T0_NS + seconds(5), bid_price=0.0, bid_size=0.0))  # one-sided quote: 0 means no bid
    await store.append_batch(CONTRACT, "bid_ask", ticks)
    clock.advance(15 * 60)
    store.run_archival()
    expected = expected_statistics(pd.DataFrame(ticks), ["bid_price", "ask_price"], trades=False)
    assert_statistics_match(store, QUOTES, expected)
    assert next(iter(store.index.statistics(QUOTES))).total_volume is None


def test_catalog_rows_describe_their_files(store: TickStore, clock: ManualClock, config: StorageConfig) -> None:
    store.append_batch_sync(CONTRACT, "last", [trade(T0_NS + seconds(i), i) for i in range(100)])
    clock.advance(HOUR)
    store.run_archival()
    (row,) = store.index.files()
    path = config.archive_dir / row.file_path
    assert row.file_size_bytes == path.stat().st_size
    assert row.tick_count == pq.read_metadata(path).num_rows == 100
    assert (row.first_seq, row.last_seq) == (1, 100)
    assert (row.start_time, row.end_time) == (T0_NS, T0_NS + seconds(99))
    assert row.compression_ratio == pytest.approx(row.jsonl_bytes / row.file_size_bytes, rel=1e-3)
    segment = config.buffer_dir / str(CONTRACT) / "last" / "20250110T1400.jsonl"
    assert row.jsonl_bytes == segment.stat().st_size
    with closing(sqlite3.connect(config.index_file)) as db:
        (checksum,) = db.execute("SELECT checksum FROM tick_archives").fetchone()
    assert checksum == hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_reader_registered_during_a_retirement_commit_keeps_its_files(
    store: TickStore, clock: ManualClock, config: StorageConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The soak found this: compaction stamps retired_at, then commits; a reader that registers in between
    (with a later clock value) plans from the old catalog, so its files must outlive the commit."""
    await fill_hour(store, clock)
    store.run_archival()
    parts = [config.archive_dir / p for p in archive_files(config)]
    original = type(store.index).replace
    late_reader = store.index.readers.reading()

    def replace_with_a_reader_in_between(self: Any, *args: Any, **kwargs: Any) -> None:
        clock.advance(100)  # the clock moves on after retired_at was read
        late_reader.__enter__()  # a query registers and plans before the commit
        original(self, *args, **kwargs)

    monkeypatch.setattr(type(store.index), "replace", replace_with_a_reader_in_between)
    store.run_compaction()  # compacts, then reaps with grace 0
    assert all(p.exists() for p in parts), "a file planned by a running reader was deleted"
    late_reader.__exit__(None, None, None)
    store.run_maintenance()
    assert not any(p.exists() for p in parts)
