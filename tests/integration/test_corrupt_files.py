"""Damaged archive and buffer files: verify names each one, a query that touches one raises a
CorruptFileError naming it, and everything else keeps working.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ib_stream.clock import ManualClock
from ib_stream.domain import StreamKey, TickType
from ib_stream.errors import CorruptFileError, StorageError
from ib_stream.settings import StorageConfig
from ib_stream.storage import StorageQuery, TickStore
from ib_stream.store.repair import verify
from tests.conftest import CONTRACT, T0_NS, quote, seconds, trade

HOUR = 3600


def hour_range(hour: int) -> tuple[int, int]:
    """[start, end) of the hour `hour` hours after 14:00 UTC."""
    return T0_NS + seconds(hour * HOUR), T0_NS + seconds((hour + 1) * HOUR)


@pytest.fixture
def archived(tmp_path: Path, clock: ManualClock) -> Iterator[TickStore]:
    """Three hours of trades, archived and compacted to one file per hour, the hot tier evicted."""
    config = StorageConfig(
        data_root=tmp_path / "root",
        buffer_duration_minutes=15,
        fsync_interval_ms=1,
        compaction_delay_seconds=0,
        retired_file_grace_seconds=0,
    )
    rng = np.random.default_rng(3)
    with TickStore(config, clock) as store:
        for _ in range(12):
            base = clock.now_ns()
            ticks = [trade(base + seconds(i * 4), i, price=float(rng.uniform(99, 101))) for i in range(200)]
            store.append_batch_sync(CONTRACT, "last", ticks)
            clock.advance(15 * 60)
        clock.advance(HOUR)
        store.run_archival()
        store.run_compaction()
        assert store.buffer.hot(StreamKey(CONTRACT, TickType.LAST)).snapshot().chunks == ()  # type: ignore[union-attr]
        assert len(store.index.files()) == 3
        yield store


def file_of_hour(store: TickStore, hour: int) -> Path:
    start, end = hour_range(hour)
    (row,) = [f for f in store.index.files() if start <= f.start_time < end]
    return store.config.archive_dir / row.file_path


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def break_footer_magic(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-4:] = b"XXXX"
    path.write_bytes(bytes(data))


async def query_hour(store: TickStore, hour: int) -> int:
    return len(await StorageQuery(store.engine).query_range(CONTRACT, "last", *hour_range(hour)))


def relative(store: TickStore, path: Path) -> str:
    return path.relative_to(store.config.archive_dir).as_posix()


async def test_verify_names_the_truncated_and_the_corrupted_file(archived: TickStore) -> None:
    truncated, corrupted = file_of_hour(archived, 0), file_of_hour(archived, 1)
    truncate(truncated)
    break_footer_magic(corrupted)
    report = verify(archived.config)
    assert not report.ok
    found = {(p.kind, p.path) for p in report.problems}
    assert {path for _, path in found} == {relative(archived, truncated), relative(archived, corrupted)}
    assert ("size", relative(archived, truncated)) in found
    assert ("unreadable", relative(archived, corrupted)) in found
    assert all(p.detail for p in report.problems)


@pytest.mark.parametrize("damage", [truncate, break_footer_magic], ids=["truncated", "bad-magic"])
async def test_query_touching_a_damaged_file_names_it(archived: TickStore, damage: object) -> None:
    victim = file_of_hour(archived, 1)
    damage(victim)  # type: ignore[operator]
    with pytest.raises(CorruptFileError) as caught:
        await query_hour(archived, 1)
    assert isinstance(caught.value, StorageError)
    assert str(victim) in caught.value.message
    assert caught.value.details["path"] == str(victim)
    assert caught.value.code == "CORRUPT_FILE"
    with pytest.raises(CorruptFileError):
        await StorageQuery(archived.engine).query_range(CONTRACT, "last", hour_range(0)[0], hour_range(2)[1])


async def test_other_ranges_still_work_beside_damaged_files(archived: TickStore) -> None:
    truncate(file_of_hour(archived, 0))
    break_footer_magic(file_of_hour(archived, 2))
    assert await query_hour(archived, 1) == 800  # first query of this range: read from its file
    # Bars of hour 1 also read the session before it (14:30 on: the close carried into empty bars, the CVD and
    # session VWAP), which lies in the truncated hour-0 file: the answer is an error naming it, never bars that
    # silently leave its trades out.
    with pytest.raises(CorruptFileError) as caught:
        await StorageQuery(archived.engine).query_range(CONTRACT, "last", *hour_range(1), resolution="1m")
    assert str(file_of_hour(archived, 0)) in caught.value.message


async def test_file_with_another_schema_is_corrupt(archived: TickStore, clock: ManualClock) -> None:
    victim = file_of_hour(archived, 1)
    await archived.append_batch(CONTRACT, "bid_ask", [quote(clock.now_ns())])
    clock.advance(HOUR)
    archived.run_archival()
    (quotes,) = archived.index.files(StreamKey(CONTRACT, TickType.BID_ASK))
    victim.write_bytes((archived.config.archive_dir / quotes.file_path).read_bytes())
    with pytest.raises(CorruptFileError) as caught:
        await query_hour(archived, 1)
    assert str(victim) in caught.value.message
    assert "schema" in caught.value.message


async def test_missing_file_is_a_storage_error_naming_it(archived: TickStore) -> None:
    victim = file_of_hour(archived, 2)
    victim.unlink()
    with pytest.raises(StorageError) as caught:
        await query_hour(archived, 2)
    assert str(victim) in caught.value.message
    assert await query_hour(archived, 0) == 800


async def test_query_of_a_file_with_a_garbled_footer_raises_corrupt_file(archived: TickStore) -> None:
    victim = file_of_hour(archived, 1)
    data = bytearray(victim.read_bytes())
    footer_start = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    data[data.index(b"exchange", footer_start)] = 0x91  # a column name that is no longer UTF-8
    victim.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError) as caught:
        await query_hour(archived, 1)
    assert str(victim) in caught.value.message


async def test_flipped_byte_in_a_data_page_is_detected_by_the_query(archived: TickStore) -> None:
    victim = file_of_hour(archived, 1)
    metadata = pq.ParquetFile(victim).metadata
    column = metadata.row_group(0).column(metadata.schema.to_arrow_schema().names.index("price"))
    start = column.dictionary_page_offset if column.has_dictionary_page else column.data_page_offset
    data = bytearray(victim.read_bytes())
    data[start + column.total_compressed_size // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError):
        await query_hour(archived, 1)


# ---- buffer segments --------------------------------------------------------------------------------


async def garble_line(store: TickStore, tick_type: str, line: int) -> Path:
    segment = store.config.buffer_dir / str(CONTRACT) / tick_type / "20250110T1400.jsonl"
    lines = segment.read_bytes().splitlines(keepends=True)
    lines[line] = b'{"seq":5,"ts":oops}\n'
    segment.write_bytes(b"".join(lines))
    return segment


async def test_archiving_a_garbled_segment_names_it(store: TickStore, clock: ManualClock) -> None:
    await store.append_batch(CONTRACT, "bid_ask", [quote(T0_NS + seconds(i), i) for i in range(10)])
    clock.advance(15 * 60)
    segment = await garble_line(store, "bid_ask", 4)
    with pytest.raises(CorruptFileError) as caught:
        store.run_archival()
    assert str(segment) in caught.value.message
    assert store.index.files() == []  # nothing half-archived


async def test_a_garbled_segment_does_not_stop_other_streams_archiving(store: TickStore, clock: ManualClock) -> None:
    await store.append_batch(CONTRACT, "bid_ask", [quote(T0_NS + seconds(i), i) for i in range(10)])
    await store.append_batch(CONTRACT, "last", [trade(T0_NS + seconds(i), i) for i in range(10)])
    clock.advance(15 * 60)
    await garble_line(store, "bid_ask", 4)
    with contextlib.suppress(CorruptFileError):  # reporting the bad segment is fine ...
        store.run_archival()
    # ... abandoning the healthy stream is not.
    assert store.index.archived_seqs().get(StreamKey(CONTRACT, TickType.LAST)) == 10
