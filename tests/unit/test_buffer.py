"""The JSON-lines buffer: segment layout, rotation, gap-free seq, torn tails, batch policy,
durability on acknowledgement, hot-cache warm-up and the data-root lock.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from ib_stream.clock import ManualClock
from ib_stream.domain import StreamKey, TickType
from ib_stream.errors import DataRootLockedError, StorageError, TickValidationError, ValidationError
from ib_stream.settings import StorageConfig
from ib_stream.storage import StorageQuery, TickStore
from tests.conftest import CONTRACT, T0_NS, quote, seconds, trade

LAST = StreamKey(CONTRACT, TickType.LAST)
QUOTES = StreamKey(CONTRACT, TickType.BID_ASK)


def stream_dir(config: StorageConfig, stream: StreamKey) -> Path:
    return config.data_root / "buffer" / str(stream.contract_id) / stream.tick_type.value


def segment_names(config: StorageConfig, stream: StreamKey) -> list[str]:
    directory = stream_dir(config, stream)
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def hot_table(store: TickStore, stream: StreamKey) -> pa.Table:
    hot = store.buffer.hot(stream)
    assert hot is not None
    chunks = [c.table for c in hot.snapshot().chunks]
    return pa.concat_tables(chunks) if chunks else pa.table({"seq": pa.array([], pa.int64())})


def reopen(store: TickStore) -> TickStore:
    store.close()
    return TickStore(store.config, store.clock).open()


async def append_trades(store: TickStore, count: int, start_ns: int = T0_NS, first: int = 0) -> None:
    ticks = [trade(start_ns + seconds(i), first + i) for i in range(count)]
    await store.append_batch(CONTRACT, "last", ticks, source="test")


# ---- layout and content --------------------------------------------------------------------------


async def test_segment_path_is_utc_aligned_to_fifteen_minutes(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    clock.advance(7 * 60 + 30)  # 14:07:30
    await append_trades(store, 1)
    clock.advance(9 * 60)  # 14:16:30
    await append_trades(store, 1)
    clock.advance(44 * 60)  # 15:00:30
    await append_trades(store, 1)
    assert segment_names(config, LAST) == ["20250110T1400.jsonl", "20250110T1415.jsonl", "20250110T1500.jsonl"]


async def test_segments_follow_arrival_time_not_event_time(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    await store.append_batch(CONTRACT, "last", [trade(T0_NS - seconds(86_400 * 3))])  # a late tick, days old
    assert segment_names(config, LAST) == ["20250110T1400.jsonl"]


async def test_segment_holds_one_json_line_per_tick_with_common_fields(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    clock.advance(12)
    ticks = [trade(T0_NS + seconds(i), i, side=1 if i % 2 else None) for i in range(3)]
    result = await store.append_batch(CONTRACT, "last", ticks, source="ib_tbt")
    assert (result.first_seq, result.last_seq, result.count) == (1, 3, 3)
    lines = read_lines(stream_dir(config, LAST) / "20250110T1400.jsonl")
    assert [line["seq"] for line in lines] == [1, 2, 3]
    assert [line["ts"] for line in lines] == [t["ts"] for t in ticks]
    assert {line["recv_ts"] for line in lines} == {T0_NS + seconds(12)}
    assert {line["source"] for line in lines} == {"ib_tbt"}
    assert [line["price"] for line in lines] == [t["price"] for t in ticks]
    assert [line["side"] for line in lines] == [None, 1, None]
    assert lines[0]["exchange"] == "NASDAQ"
    assert lines[0]["past_limit"] is False


async def test_each_stream_has_its_own_directory_and_seq(store: TickStore, config: StorageConfig) -> None:
    await append_trades(store, 2)
    result = await store.append_batch(CONTRACT, "BidAsk", [quote(T0_NS)])
    assert result.stream == QUOTES
    assert result.first_seq == 1
    other = await store.append_batch(CONTRACT + 1, "last", [trade(T0_NS)])
    assert other.first_seq == 1
    assert segment_names(config, QUOTES) == ["20250110T1400.jsonl"]
    assert segment_names(config, StreamKey(CONTRACT + 1, TickType.LAST)) == ["20250110T1400.jsonl"]


# ---- rotation ---------------------------------------------------------------------------------------


async def test_segment_is_sealed_on_the_clock_boundary_even_when_idle(store: TickStore, clock: ManualClock) -> None:
    clock.advance(60)
    await append_trades(store, 5)
    assert store.buffer.sealed_segments(LAST) == []
    clock.set(T0_NS + seconds(15 * 60) - 1)
    assert store.buffer.sealed_segments(LAST) == []
    clock.set(T0_NS + seconds(15 * 60))  # no append since: only the clock moved
    sealed = store.buffer.sealed_segments(LAST)
    assert [s.path.name for s in sealed] == ["20250110T1400.jsonl"]
    assert (sealed[0].start_ns, sealed[0].end_ns) == (T0_NS, T0_NS + seconds(900))


async def test_new_segment_after_rotation_continues_seq(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    await append_trades(store, 3)
    clock.advance(15 * 60)
    await append_trades(store, 2, start_ns=T0_NS + seconds(900))
    first, second = (read_lines(stream_dir(config, LAST) / n) for n in segment_names(config, LAST))
    assert [t["seq"] for t in first] == [1, 2, 3]
    assert [t["seq"] for t in second] == [4, 5]


# ---- seq across restarts -----------------------------------------------------------------------------


async def test_seq_is_gap_free_across_close_and_reopen(store: TickStore, clock: ManualClock) -> None:
    await append_trades(store, 4)
    clock.advance(20 * 60)
    await append_trades(store, 3)
    store = reopen(store)
    try:
        result = await store.append_batch(CONTRACT, "last", [trade(T0_NS + seconds(1300))])
        assert result.first_seq == 8
    finally:
        store.close()


async def test_seq_is_recovered_from_the_catalog_when_segments_are_gone(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    await append_trades(store, 10)
    clock.advance(25 * 3600)  # past buffer retention (24 h)
    store.run_archival()
    store.run_retention()
    assert segment_names(config, LAST) == []
    store = reopen(store)
    try:
        result = await store.append_batch(CONTRACT, "last", [trade(clock.now_ns())])
        assert result.first_seq == 11
    finally:
        store.close()


async def test_seq_is_recovered_from_the_catalog_when_the_buffer_directory_is_gone(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    await append_trades(store, 10)
    clock.advance(20 * 60)
    store.run_archival()
    store.close()
    for path in sorted(stream_dir(config, LAST).iterdir()):
        path.unlink()
    stream_dir(config, LAST).rmdir()
    store = TickStore(config, clock).open()
    try:
        result = await store.append_batch(CONTRACT, "last", [trade(clock.now_ns())])
        assert result.first_seq == 11
    finally:
        store.close()


async def test_seq_continues_after_retention_removed_every_file_and_the_buffer_directory(
    tmp_path: Path, clock: ManualClock
) -> None:
    config = StorageConfig(
        data_root=tmp_path / "root", fsync_interval_ms=1, archive_retention_days=1, retired_file_grace_seconds=0
    )
    with TickStore(config, clock) as store:
        await append_trades(store, 10)
        clock.advance(3 * 86_400)
        store.run_archival()
        store.run_retention()
        assert store.index.files() == []  # only the catalog's watermark remembers seq 10
    shutil.rmtree(config.buffer_dir / str(CONTRACT))
    with TickStore(config, clock) as store:
        result = await store.append_batch(CONTRACT, "last", [trade(clock.now_ns())])
    assert result.first_seq == 11


# ---- torn tails ---------------------------------------------------------------------------------------


async def test_torn_last_line_is_truncated_counted_and_the_rest_untouched(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    await append_trades(store, 5)
    store.close()
    segment = stream_dir(config, LAST) / "20250110T1400.jsonl"
    intact = segment.read_bytes()
    with open(segment, "ab") as handle:
        handle.write(b'{"seq":6,"ts":17365176000000')  # a crash in the middle of a write
    store = TickStore(config, clock).open()
    try:
        assert store.buffer.stats.torn_lines_truncated == 1
        assert store.buffer.stats.torn_files == [str(segment)]
        assert segment.read_bytes() == intact
        result = await store.append_batch(CONTRACT, "last", [trade(T0_NS + seconds(10))])
        assert result.first_seq == 6
        frame = await StorageQuery(store.engine).query_range(CONTRACT, "last", T0_NS, T0_NS + seconds(60))
        assert list(frame["seq"]) == [1, 2, 3, 4, 5, 6]
    finally:
        store.close()


async def test_segment_holding_only_a_torn_line_becomes_empty(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    await append_trades(store, 2)
    clock.advance(15 * 60)
    store.close()
    newest = stream_dir(config, LAST) / "20250110T1415.jsonl"
    newest.write_bytes(b'{"seq":3,"ts"')
    store = TickStore(config, clock).open()
    try:
        assert store.buffer.stats.torn_lines_truncated == 1
        assert newest.read_bytes() == b""
        result = await store.append_batch(CONTRACT, "last", [trade(clock.now_ns())])
        assert result.first_seq == 3
    finally:
        store.close()


async def test_clean_segments_are_not_counted_as_torn(
    store: TickStore, config: StorageConfig, clock: ManualClock
) -> None:
    await append_trades(store, 3)
    store = reopen(store)
    try:
        assert store.buffer.stats.torn_lines_truncated == 0
    finally:
        store.close()


# ---- batch policy ----------------------------------------------------------------------------------


async def test_rejected_batch_stores_nothing_and_names_index_and_field(store: TickStore, config: StorageConfig) -> None:
    batch = [trade(T0_NS), trade(T0_NS + 1, price=-5.0), trade(T0_NS + 2)]
    with pytest.raises(TickValidationError) as caught:
        await store.append_batch(CONTRACT, "last", batch, on_error="reject")
    assert caught.value.details["index"] == 1
    assert caught.value.field == "price"
    assert "-5.0" in caught.value.message
    assert segment_names(config, LAST) == []
    result = await store.append_batch(CONTRACT, "last", [trade(T0_NS)])
    assert result.first_seq == 1  # the rejected batch consumed no seq


async def test_rejected_batch_is_counted(store: TickStore) -> None:
    with pytest.raises(TickValidationError):
        await store.append_batch(CONTRACT, "last", [trade(T0_NS), trade(T0_NS, size=-1.0)])
    assert store.buffer.stats.rejected_ticks >= 1


async def test_skip_stores_the_valid_ticks_and_reports_the_rejected(store: TickStore, config: StorageConfig) -> None:
    batch = [trade(T0_NS), trade(T0_NS + 1, size=float("nan")), trade(T0_NS + 2), trade(T0_NS + 3, seq=9)]
    result = await store.append_batch(CONTRACT, "last", batch, on_error="skip")
    assert (result.first_seq, result.last_seq, result.count) == (1, 2, 2)
    assert [(e.details["index"], e.field) for e in result.rejected] == [(1, "size"), (3, "seq")]
    assert store.buffer.stats.rejected_ticks == 2
    lines = read_lines(stream_dir(config, LAST) / "20250110T1400.jsonl")
    assert [(t["seq"], t["ts"]) for t in lines] == [(1, T0_NS), (2, T0_NS + 2)]


async def test_skip_with_nothing_valid_stores_nothing(store: TickStore, config: StorageConfig) -> None:
    result = await store.append_batch(CONTRACT, "last", [trade(T0_NS, price="x")], on_error="skip")
    assert result.count == 0
    assert len(result.rejected) == 1
    assert segment_names(config, LAST) == []


async def test_rejected_batch_leaves_stored_data_untouched(store: TickStore, config: StorageConfig) -> None:
    await append_trades(store, 20)
    segment = stream_dir(config, LAST) / "20250110T1400.jsonl"
    before_bytes = segment.read_bytes()
    before = await StorageQuery(store.engine).query_range(CONTRACT, "last", T0_NS, T0_NS + seconds(60))
    for bad in (trade(T0_NS, price=float("inf")), trade(T0_NS // 10**9), {"ts": T0_NS}, trade(T0_NS, extra=1)):
        with pytest.raises(TickValidationError):
            await store.append_batch(CONTRACT, "last", [trade(T0_NS + 5), bad])
    skipped = await store.append_batch(CONTRACT, "last", [trade(T0_NS, size=-1.0)], on_error="skip")
    assert skipped.count == 0
    assert segment.read_bytes() == before_bytes
    after = await StorageQuery(store.engine).query_range(CONTRACT, "last", T0_NS, T0_NS + seconds(60))
    assert after.equals(before)


async def test_unencodable_tick_is_rejected_without_consuming_a_seq(store: TickStore) -> None:
    with pytest.raises(TickValidationError):
        await store.append_batch(CONTRACT, "last", [trade(T0_NS, recv_ts=2**64)])
    result = await store.append_batch(CONTRACT, "last", [trade(T0_NS)])
    assert result.first_seq == 1


async def test_skip_survives_any_malformed_value(store: TickStore) -> None:
    result = await store.append_batch(CONTRACT, "last", [trade(T0_NS), trade(T0_NS, side=[1])], on_error="skip")
    assert result.count == 1


async def test_an_acknowledged_tick_can_always_be_read_back_and_archived(store: TickStore, clock: ManualClock) -> None:
    tick = {"ts": T0_NS, "side": "bid", "position": 2**40, "operation": "insert", "price": 1.0, "size": 1.0}
    try:
        await store.append_batch(CONTRACT, "depth", [tick])
    except TickValidationError:
        return  # refusing it up front keeps the stream healthy
    await StorageQuery(store.engine).query_range(CONTRACT, "depth", T0_NS, T0_NS + 1)
    clock.advance(15 * 60)
    store.run_archival()


async def test_bad_stream_names_are_validation_errors(store: TickStore) -> None:
    with pytest.raises(ValidationError) as caught:
        await store.append_batch(CONTRACT, "trades", [trade(T0_NS)])
    assert caught.value.field == "tick_type"
    with pytest.raises(ValidationError) as caught:
        await store.append_batch("abc", "last", [trade(T0_NS)])  # type: ignore[arg-type]
    assert caught.value.field == "contract_id"


# ---- durability ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fsync_interval_ms", [0, 50])
async def test_append_returns_only_once_the_bytes_are_in_the_file(
    tmp_path: Path, clock: ManualClock, fsync_interval_ms: int
) -> None:
    config = StorageConfig(data_root=tmp_path / "root", fsync_interval_ms=fsync_interval_ms)
    store = TickStore(config, clock).open()
    try:
        segment = stream_dir(config, LAST) / "20250110T1400.jsonl"
        for n in range(1, 6):
            fsyncs = store.buffer.stats.fsyncs
            await store.append_batch(CONTRACT, "last", [trade(T0_NS + n, n)])
            assert [t["seq"] for t in read_lines(segment)] == list(range(1, n + 1))
            assert store.buffer.stats.fsyncs > fsyncs
    finally:
        store.close()


async def test_group_commit_shares_fsyncs_between_concurrent_batches(tmp_path: Path, clock: ManualClock) -> None:
    config = StorageConfig(data_root=tmp_path / "root", fsync_interval_ms=50)
    store = TickStore(config, clock).open()
    try:
        futures = [store.buffer.submit(CONTRACT, "last", [trade(T0_NS + i, i)]) for i in range(20)]
        results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        assert [r.first_seq for r in results] == list(range(1, 21))
        assert store.buffer.stats.batches_written == 20
        assert store.buffer.stats.fsyncs < 20
    finally:
        store.close()


def test_blocking_append_for_code_without_a_loop(store: TickStore, config: StorageConfig) -> None:
    result = store.append_batch_sync(CONTRACT, "last", [trade(T0_NS)])
    assert result.count == 1
    assert len(read_lines(stream_dir(config, LAST) / "20250110T1400.jsonl")) == 1


async def test_append_after_close_is_a_storage_error(store: TickStore) -> None:
    store.close()
    with pytest.raises(StorageError):
        await store.append_batch(CONTRACT, "last", [trade(T0_NS)])


# ---- hot cache ----------------------------------------------------------------------------------------


async def test_appended_ticks_are_in_the_hot_cache(store: TickStore) -> None:
    await append_trades(store, 7)
    assert hot_table(store, LAST).column("seq").to_pylist() == list(range(1, 8))


async def test_hot_cache_is_warmed_from_segments_on_reopen(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    await append_trades(store, 30)
    clock.advance(20 * 60)
    await append_trades(store, 10, start_ns=T0_NS + seconds(1200), first=30)
    store = reopen(store)
    try:
        assert store.index.files() == []  # nothing archived: the query can only come from the hot tier
        assert hot_table(store, LAST).column("seq").to_pylist() == list(range(1, 41))
        frame = await StorageQuery(store.engine).query_range(CONTRACT, "last", T0_NS, T0_NS + seconds(3600))
        assert list(frame["seq"]) == list(range(1, 41))
        assert list(frame["price"]) == [trade(0, i)["price"] for i in range(40)]
    finally:
        store.close()


# ---- data-root lock ---------------------------------------------------------------------------------


def test_second_store_on_the_same_root_is_refused(store: TickStore, config: StorageConfig, clock: ManualClock) -> None:
    with pytest.raises(DataRootLockedError) as caught:
        TickStore(config, clock).open()
    assert str(config.data_root) in caught.value.message
    assert isinstance(caught.value, StorageError)


def test_root_is_free_again_after_close(store: TickStore, config: StorageConfig, clock: ManualClock) -> None:
    store.close()
    second = TickStore(config, clock).open()
    second.close()
