"""Range queries: the DataFrame shape, time arguments, argument errors, exactly-once merging of
the hot and cold tiers at every stage of a tick's life, and reading only the files needed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from ib_stream.clock import ManualClock, to_ns
from ib_stream.domain import StreamKey, TickType
from ib_stream.errors import CorruptFileError, QueryError, ValidationError
from ib_stream.settings import StorageConfig
from ib_stream.storage import StorageQuery, TickStore
from ib_stream.times import to_utc_ns
from tests.conftest import CONTRACT, T0, T0_NS, quote, seconds, trade

LAST = StreamKey(CONTRACT, TickType.LAST)
HOUR = 3600
TRADE_COLUMNS = [
    "timestamp",
    "seq",
    "recv_ts",
    "source",
    "price",
    "size",
    "exchange",
    "conditions",
    "past_limit",
    "unreported",
    "side",
]


@pytest.fixture
def new_york() -> Iterator[None]:
    """Run with the process time zone set to America/New_York (UTC-5 in winter, UTC-4 in summer)."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


@pytest.fixture
def small_hot(tmp_path: Path, clock: ManualClock) -> Iterator[TickStore]:
    """A store whose hot tier keeps only 30 minutes, so eviction happens within a test."""
    config = StorageConfig(
        data_root=tmp_path / "small",
        buffer_duration_minutes=30,
        fsync_interval_ms=1,
        compaction_delay_seconds=0,
        retired_file_grace_seconds=0,
    )
    with TickStore(config, clock) as store:
        yield store


async def two_hours_of_trades(store: TickStore, clock: ManualClock, per_segment: int = 25) -> None:
    """Append trades every 15-minute segment for two hours; event time trails arrival by a little."""
    for k in range(8):
        base = clock.now_ns()
        ticks = [trade(base + seconds(i * 30) - seconds(5), k * per_segment + i) for i in range(per_segment)]
        await store.append_batch(CONTRACT, "last", ticks)
        clock.advance(15 * 60)


async def query(store: TickStore, start: int, end: int, types: str | list[str] = "last") -> pd.DataFrame:
    return await StorageQuery(store.engine).query_range(CONTRACT, types, start, end)


# ---- result shape --------------------------------------------------------------------------------


async def test_result_has_a_utc_timestamp_and_the_type_fields(store: TickStore) -> None:
    await store.append_batch(CONTRACT, "last", [trade(T0_NS + seconds(i), i) for i in range(3)])
    frame = await query(store, T0_NS, T0_NS + seconds(60))
    assert list(frame.columns) == TRADE_COLUMNS
    assert isinstance(frame["timestamp"].dtype, pd.DatetimeTZDtype)
    assert str(frame["timestamp"].dt.tz) == "UTC"
    assert list(frame["timestamp"]) == [pd.Timestamp(T0) + pd.Timedelta(seconds=i) for i in range(3)]
    assert frame["side"].isna().all()


async def test_several_types_add_a_tick_type_column_in_time_order(store: TickStore) -> None:
    await store.append_batch(CONTRACT, "last", [trade(T0_NS + seconds(2 * i + 1), i) for i in range(3)])
    await store.append_batch(CONTRACT, "bid_ask", [quote(T0_NS + seconds(2 * i), i) for i in range(3)])
    frame = await query(store, T0_NS, T0_NS + seconds(60), ["BidAsk", "last"])
    assert list(frame.columns[:2]) == ["timestamp", "tick_type"]
    assert list(frame["tick_type"]) == ["bid_ask", "last"] * 3
    assert frame["timestamp"].is_monotonic_increasing
    assert {"bid_price", "ask_size", "price", "size"} <= set(frame.columns)
    single = await query(store, T0_NS, T0_NS + seconds(60), "bid_ask")
    assert "tick_type" not in single.columns


async def test_empty_range_returns_an_empty_frame_with_the_columns(store: TickStore) -> None:
    frame = await query(store, T0_NS, T0_NS + seconds(60))
    assert frame.empty
    assert list(frame.columns) == TRADE_COLUMNS
    assert isinstance(frame["timestamp"].dtype, pd.DatetimeTZDtype)


async def test_range_is_start_inclusive_end_exclusive(store: TickStore) -> None:
    await store.append_batch(CONTRACT, "last", [trade(T0_NS + seconds(i), i) for i in range(10)])
    frame = await query(store, T0_NS + seconds(2), T0_NS + seconds(5))
    assert list(frame["seq"]) == [3, 4, 5]


async def test_ticks_sharing_a_timestamp_come_back_in_seq_order(store: TickStore) -> None:
    await store.append_batch(CONTRACT, "last", [trade(T0_NS + seconds(1), i) for i in range(5)])
    await store.append_batch(CONTRACT, "last", [trade(T0_NS, 9)])
    frame = await query(store, T0_NS, T0_NS + seconds(60))
    assert list(frame["seq"]) == [6, 1, 2, 3, 4, 5]


# ---- time arguments ---------------------------------------------------------------------------------


async def test_end_time_none_means_now(store: TickStore, clock: ManualClock) -> None:
    await store.append_batch(CONTRACT, "last", [trade(T0_NS + seconds(i), i) for i in range(60)])
    clock.set(T0_NS + seconds(30))
    frame = await StorageQuery(store.engine).query_range(CONTRACT, "last", T0_NS)
    assert list(frame["seq"]) == list(range(1, 31))
    clock.set(T0_NS + seconds(45))
    frame = await StorageQuery(store.engine).query_range(CONTRACT, "last", T0_NS)
    assert len(frame) == 45


async def test_aware_datetimes_strings_and_ns_are_the_same_instant(store: TickStore) -> None:
    await store.append_batch(CONTRACT, "last", [trade(T0_NS + seconds(i), i) for i in range(10)])
    expected = list(range(1, 6))
    for start, end in [
        (T0, datetime(2025, 1, 10, 14, 0, 5, tzinfo=UTC)),
        ("2025-01-10T14:00:00Z", "2025-01-10T09:00:05-05:00"),
        (pd.Timestamp(T0), pd.Timestamp("2025-01-10 14:00:05", tz="UTC")),
        (T0_NS, T0_NS + seconds(5)),
    ]:
        frame = await StorageQuery(store.engine).query_range(CONTRACT, "last", start, end)
        assert list(frame["seq"]) == expected, (start, end)


async def test_naive_datetimes_are_local_time(store: TickStore, new_york: None) -> None:
    await store.append_batch(CONTRACT, "last", [trade(T0_NS + seconds(i), i) for i in range(10)])
    # 14:00 UTC is 09:00 in New York in January.
    frame = await StorageQuery(store.engine).query_range(
        CONTRACT, "last", datetime(2025, 1, 10, 9, 0, 0), datetime(2025, 1, 10, 9, 0, 3)
    )
    assert list(frame["seq"]) == [1, 2, 3]
    assert to_utc_ns(datetime(2025, 1, 10, 9)) == T0_NS == to_ns(datetime(2025, 1, 10, 9).astimezone())


def test_naive_string_and_timestamp_follow_the_date_offset_across_dst(new_york: None) -> None:
    for naive in (datetime(2025, 1, 10, 9), datetime(2025, 7, 10, 9)):
        expected = to_ns(naive.astimezone())
        assert to_utc_ns(naive) == expected
        assert to_utc_ns(pd.Timestamp(naive)) == expected, naive
        assert to_utc_ns(naive.isoformat()) == expected, naive


async def test_end_before_start_names_both(store: TickStore) -> None:
    with pytest.raises(QueryError) as caught:
        await StorageQuery(store.engine).query_range(CONTRACT, "last", "2025-01-10T10:00Z", "2025-01-10T09:00Z")
    assert "2025-01-10T10:00:00Z" in caught.value.message
    assert "2025-01-10T09:00:00Z" in caught.value.message
    assert caught.value.details["field"] == "end_time"
    with pytest.raises(QueryError):
        await StorageQuery(store.engine).query_range(CONTRACT, "last", T0_NS, T0_NS)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tick_types": "trades"}, "tick_types"),
        ({"tick_types": "nope,last"}, "tick_types"),
        ({"resolution": "2m"}, "resolution"),
        ({"resolution": "1M"}, "resolution"),
        ({"start_time": "yesterday-ish"}, "start_time"),
        ({"end_time": "not a time"}, "end_time"),
    ],
)
async def test_bad_arguments_are_validation_errors_naming_the_field(
    store: TickStore, kwargs: dict[str, str], field: str
) -> None:
    arguments = {"tick_types": "last", "start_time": T0_NS, "end_time": T0_NS + 1, **kwargs}
    with pytest.raises(ValidationError) as caught:
        await StorageQuery(store.engine).query_range(CONTRACT, **arguments)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert str(kwargs[next(iter(kwargs))]).split(",")[0] in caught.value.message


async def test_contract_id_must_be_an_integer(store: TickStore) -> None:
    with pytest.raises(ValidationError) as caught:
        await StorageQuery(store.engine).query_range("265598", "last", T0_NS, T0_NS + 1)  # type: ignore[arg-type]
    assert caught.value.field == "contract_id"


def test_blocking_query_for_code_without_a_loop(store: TickStore) -> None:
    store.append_batch_sync(CONTRACT, "last", [trade(T0_NS)])
    assert list(StorageQuery(store.engine).query_range_sync(CONTRACT, "last", T0_NS, T0_NS + 1)["seq"]) == [1]


async def test_order_flow_bars_from_the_public_query_api(store: TickStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from ib_stream.analytics.request import BarsRequest
    from ib_stream.domain import Contract
    from ib_stream.orderflow.service import OrderFlow

    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the repository's contracts file lists CONTRACT (XNAS)
    store.append_batch_sync(CONTRACT, "bid_ask", [quote(T0_NS + seconds(i), i) for i in range(0, 600, 7)])
    store.append_batch_sync(CONTRACT, "last", [trade(T0_NS + seconds(i) + 1, i) for i in range(0, 600, 3)])
    end = T0_NS + seconds(600)
    aapl = Contract(CONTRACT, "AAPL", calendar="XNAS")
    got = await StorageQuery(store.engine, contracts=[aapl]).bars(CONTRACT, T0_NS, end, "1m")
    want = OrderFlow(store.engine, aapl).bars(BarsRequest(CONTRACT, T0_NS, end))
    pd.testing.assert_frame_equal(got, want.to_pandas())
    assert len(got) == 10 and got["trade_count"].sum() == 200 and {"cvd_close", "obi_close"} <= set(got.columns)
    # Read-only, as another process would: the same bars; an unconfigured id gets XNYS, `calendar` overrides.
    readonly = StorageQuery(config=store.config)
    try:
        pd.testing.assert_frame_equal(readonly.bars_sync(CONTRACT, T0_NS, end, "1m"), got)
        assert readonly._contract(CONTRACT, None).calendar == "XNAS"
        assert readonly._contract(424242, None).calendar == "XNYS"
        assert readonly._contract(CONTRACT, "24/7").calendar == "24/7"
        only = readonly.bars_sync(CONTRACT, T0_NS, end, "5m", "cvd", anchor="range", trades="Last")
        assert list(only.columns) == ["timestamp", "empty", "delta", "cvd_open", "cvd_high", "cvd_low", "cvd_close"]
        with pytest.raises(ValidationError) as bad:
            readonly.bars_sync(CONTRACT, T0_NS, end, "1m", "ohlc,volume")
        assert bad.value.field == "kinds"
        with pytest.raises(QueryError):
            readonly.bars_sync(CONTRACT, end, T0_NS)
    finally:
        readonly.close()


# ---- exactly once across tiers ---------------------------------------------------------------------


async def test_every_tick_comes_back_exactly_once_at_every_stage(small_hot: TickStore, clock: ManualClock) -> None:
    store = small_hot
    await two_hours_of_trades(store, clock)  # clock now 16:00
    ranges = [(T0_NS - seconds(60), T0_NS + seconds(3 * HOUR)), (T0_NS + seconds(1234), T0_NS + seconds(5678))]
    baseline = [await query(store, s, e) for s, e in ranges]
    assert list(baseline[0]["seq"]) == list(range(1, 201))

    def hot_rows() -> int:
        hot = store.buffer.hot(LAST)
        assert hot is not None
        return sum(c.table.num_rows for c in hot.snapshot().chunks)

    stages = []
    clock.advance(1)
    store.run_archival()  # everything sealed is archived; the last 30 minutes stay hot too
    stages.append(("archived and still hot", store.index.archived_seqs() == {LAST: 200} and hot_rows() > 0))
    for (start, end), expected in zip(ranges, baseline, strict=True):
        assert (await query(store, start, end)).equals(expected)
    store.run_compaction()
    store.run_maintenance()
    stages.append(("compacted", len(store.index.files()) == 3))  # hours 13 (ticks trail arrival), 14, 15
    for (start, end), expected in zip(ranges, baseline, strict=True):
        assert (await query(store, start, end)).equals(expected)
    clock.advance(HOUR)
    store.run_archival()  # evicts the rest of the hot tier
    stages.append(("evicted", hot_rows() == 0))
    for (start, end), expected in zip(ranges, baseline, strict=True):
        assert (await query(store, start, end)).equals(expected)
    assert all(ok for _, ok in stages), stages


async def test_exactly_once_while_only_some_segments_are_archived(store: TickStore, clock: ManualClock) -> None:
    await two_hours_of_trades(store, clock)
    full = await query(store, T0_NS - seconds(60), T0_NS + seconds(3 * HOUR))
    clock.set(T0_NS + seconds(HOUR))  # pretend archival ran at 15:00: only the first hour's segments are sealed
    store.run_archival()
    assert store.index.archived_seqs() == {LAST: 100}
    clock.set(T0_NS + seconds(2 * HOUR + 1))
    assert (await query(store, T0_NS - seconds(60), T0_NS + seconds(3 * HOUR))).equals(full)
    store.run_archival()
    store.run_compaction()
    assert (await query(store, T0_NS - seconds(60), T0_NS + seconds(3 * HOUR))).equals(full)


async def test_hot_and_cold_agree_after_reopen(small_hot: TickStore, clock: ManualClock) -> None:
    await two_hours_of_trades(small_hot, clock)
    clock.advance(1)
    small_hot.run_archival()
    before = await query(small_hot, T0_NS - seconds(60), T0_NS + seconds(3 * HOUR))
    small_hot.close()
    with TickStore(small_hot.config, clock) as reopened:
        after = await query(reopened, T0_NS - seconds(60), T0_NS + seconds(3 * HOUR))
    assert after.equals(before)


async def test_read_only_query_sees_the_same_ticks_as_the_writer(store: TickStore, clock: ManualClock) -> None:
    await two_hours_of_trades(store, clock)
    clock.set(T0_NS + seconds(HOUR))
    store.run_archival()
    clock.set(T0_NS + seconds(2 * HOUR))
    expected = await query(store, T0_NS - seconds(60), T0_NS + seconds(3 * HOUR))
    reader = StorageQuery(config=store.config)
    try:
        got = await reader.query_range(CONTRACT, "last", T0_NS - seconds(60), T0_NS + seconds(3 * HOUR))
    finally:
        reader.close()
    pd.testing.assert_frame_equal(got, expected)


# ---- only the needed files are read ---------------------------------------------------------------------


async def test_a_query_reads_only_the_files_of_its_range(small_hot: TickStore, clock: ManualClock) -> None:
    store = small_hot
    await two_hours_of_trades(store, clock)
    clock.advance(HOUR)
    store.run_archival()
    store.run_compaction()
    by_hour = {f.file_path.split("/")[3]: f for f in store.index.files()}
    assert sorted(by_hour) == ["hour=13", "hour=14", "hour=15"]
    assert store.index.plan(LAST, T0_NS, T0_NS + seconds(HOUR)) == [by_hour["hour=14"]]
    hour_15 = [by_hour["hour=15"]]
    path = store.config.archive_dir / hour_15[0].file_path
    path.write_bytes(b"garbage" * 10)
    frame = await query(store, T0_NS - seconds(60), T0_NS + seconds(HOUR - 60))
    assert len(frame) > 0
    with pytest.raises(CorruptFileError) as caught:
        await query(store, T0_NS + seconds(HOUR), T0_NS + seconds(2 * HOUR))
    assert str(path) in caught.value.message
