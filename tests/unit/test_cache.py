"""The query result cache: hits on repeated queries, and never stale — any change to the range
(new hot ticks, archival, compaction, late data, retention) invalidates, changes elsewhere do not.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from ib_stream.clock import ManualClock
from ib_stream.domain import StreamKey, TickType
from ib_stream.settings import StorageConfig
from ib_stream.storage import StorageQuery, TickStore
from ib_stream.store.cache import ChangeTracker, QueryCache
from tests.conftest import CONTRACT, T0_NS, quote, seconds, trade

HOUR = 3600
START, END = T0_NS, T0_NS + seconds(HOUR)


async def query(store: TickStore, start: int = START, end: int = END, resolution: str | None = None) -> pd.DataFrame:
    return await StorageQuery(store.engine).query_range(CONTRACT, "last", start, end, resolution)


async def seed(store: TickStore, clock: ManualClock) -> None:
    """Ten trades in each 15-minute segment of hour 14, the clock left at 15:00."""
    for k in range(4):
        base = clock.now_ns()
        await store.append_batch(CONTRACT, "last", [trade(base + seconds(i), k * 10 + i) for i in range(10)])
        clock.advance(15 * 60)


async def assert_cached(store: TickStore, expected: pd.DataFrame) -> None:
    hits = store.cache.hits
    assert (await query(store)).equals(expected)
    assert store.cache.hits == hits + 1


async def assert_recomputed(store: TickStore) -> pd.DataFrame:
    hits, misses = store.cache.hits, store.cache.misses
    frame = await query(store)
    assert store.cache.hits == hits
    assert store.cache.misses == misses + 1
    return frame


async def test_repeated_query_is_served_from_the_cache(store: TickStore, clock: ManualClock) -> None:
    await seed(store, clock)
    first = await query(store)
    assert (store.cache.hits, store.cache.misses) == (0, 1)
    await assert_cached(store, first)
    await assert_cached(store, first)
    assert store.cache.hit_ratio == 2 / 3


async def test_different_arguments_are_different_entries(store: TickStore, clock: ManualClock) -> None:
    await seed(store, clock)
    await query(store)
    await query(store, resolution="1m")
    await query(store, end=END - 1)
    assert store.cache.hits == 0


async def test_new_hot_tick_inside_the_range_invalidates(store: TickStore, clock: ManualClock) -> None:
    await seed(store, clock)
    before = await query(store)
    await store.append_batch(CONTRACT, "last", [trade(T0_NS + seconds(1800), 99)])
    after = await assert_recomputed(store)
    assert len(after) == len(before) + 1
    await assert_cached(store, after)


async def test_new_ticks_outside_the_range_do_not_invalidate(store: TickStore, clock: ManualClock) -> None:
    await seed(store, clock)
    before = await query(store)
    await store.append_batch(CONTRACT, "last", [trade(END, 1)])  # just after the end (exclusive)
    await store.append_batch(CONTRACT, "last", [trade(START - 1, 2)])  # just before the start
    await store.append_batch(CONTRACT, "bid_ask", [quote(T0_NS + seconds(5))])  # another stream
    await store.append_batch(CONTRACT + 1, "last", [trade(T0_NS + seconds(5))])  # another contract
    await assert_cached(store, before)


async def test_archival_and_compaction_of_the_range_invalidate(store: TickStore, clock: ManualClock) -> None:
    await seed(store, clock)
    before = await query(store)
    store.run_archival()
    assert (await assert_recomputed(store)).equals(before)
    await assert_cached(store, before)
    store.run_compaction()
    assert (await assert_recomputed(store)).equals(before)


async def test_late_part_in_a_compacted_hour_invalidates(store: TickStore, clock: ManualClock) -> None:
    await seed(store, clock)
    store.run_archival()
    store.run_compaction()
    clock.advance(3 * HOUR)
    store.run_archival()  # hot tier evicted: the range is served from the archive alone
    before = await query(store)
    await assert_cached(store, before)
    await store.append_batch(CONTRACT, "last", [trade(T0_NS + seconds(10), 77)])
    clock.advance(15 * 60)
    store.run_archival()
    store.run_compaction()
    after = await assert_recomputed(store)
    assert len(after) == len(before) + 1


async def test_retention_of_the_range_invalidates(tmp_path: Path, clock: ManualClock) -> None:
    config = StorageConfig(
        data_root=tmp_path / "root", fsync_interval_ms=1, archive_retention_days=1, retired_file_grace_seconds=0
    )
    with TickStore(config, clock) as store:
        await seed(store, clock)
        clock.advance(3 * HOUR)
        store.run_archival()
        before = await query(store)
        assert len(before) == 40
        await assert_cached(store, before)
        clock.advance(86_400)
        store.run_retention()
        after = await assert_recomputed(store)
        assert after.empty


async def test_bar_results_are_invalidated_like_ticks(store: TickStore, clock: ManualClock) -> None:
    await seed(store, clock)
    before = await query(store, resolution="15m")
    await store.append_batch(CONTRACT, "last", [trade(T0_NS + seconds(5), 0, size=1000.0)])
    after = await query(store, resolution="15m")
    assert store.cache.hits == 0
    assert after["volume"].iloc[0] == before["volume"].iloc[0] + 1000.0


async def test_mutating_a_result_does_not_change_the_cached_one(store: TickStore, clock: ManualClock) -> None:
    await seed(store, clock)
    first = await query(store)
    expected = first.copy(deep=True)
    first["price"] = 0.0
    first.loc[0, "size"] = -1.0
    await assert_cached(store, expected)


async def test_disabled_cache_never_hits(tmp_path: Path, clock: ManualClock) -> None:
    config = StorageConfig(data_root=tmp_path / "root", fsync_interval_ms=1, query_cache_size=0)
    with TickStore(config, clock) as store:
        await seed(store, clock)
        await query(store)
        await query(store)
        assert store.cache.hits == 0


async def test_entries_expire_after_the_ttl(tmp_path: Path, clock: ManualClock) -> None:
    config = StorageConfig(data_root=tmp_path / "root", fsync_interval_ms=1, query_cache_ttl_seconds=0.05)
    with TickStore(config, clock) as store:
        await seed(store, clock)
        await query(store)
        clock.advance(0.1)
        await query(store)
        assert store.cache.hits == 0


async def test_the_ttl_follows_the_stores_clock_not_the_wall_clock(tmp_path: Path, clock: ManualClock) -> None:
    config = StorageConfig(data_root=tmp_path / "root", fsync_interval_ms=1, query_cache_ttl_seconds=300)
    with TickStore(config, clock) as store:
        await seed(store, clock)
        first = await query(store)
        clock.advance(299)
        await assert_cached(store, first)  # 299 s of store time: still fresh
        clock.advance(2)
        await assert_recomputed(store)  # 301 s of store time: expired, though the wall clock barely moved
    short = StorageConfig(data_root=tmp_path / "short", fsync_interval_ms=1, query_cache_ttl_seconds=0.05)
    with TickStore(short, clock) as store:
        await seed(store, clock)
        first = await query(store)
        time.sleep(0.1)  # twice the TTL of wall time, none of store time
        await assert_cached(store, first)


async def test_a_batch_spanning_decades_costs_the_tracker_two_minutes_and_stays_never_stale(store: TickStore) -> None:
    # Two ticks 50 years apart: the tracker notes the two minutes they fall in, not the 26 million between.
    before = await query(store, T0_NS - seconds(60), T0_NS + seconds(60))
    far = T0_NS + seconds(50 * 365 * 86_400)
    await store.append_batch(CONTRACT, "last", [trade(T0_NS, 0), trade(far, 1)])
    assert store.tracker.entries <= 2 * 2  # two minutes and their two hours
    after = await query(store, T0_NS - seconds(60), T0_NS + seconds(60))
    assert len(after) == len(before) + 1  # the cached answer of that minute was invalidated


def test_a_wide_change_is_one_interval_and_still_invalidates_every_minute_it_covers() -> None:
    tracker = ChangeTracker()
    stream = StreamKey(CONTRACT, TickType.LAST)
    version = tracker.version
    tracker.record(stream, T0_NS, T0_NS + seconds(10 * 365 * 86_400))  # ten years, e.g. retention
    assert tracker.entries == 1
    assert tracker.changed_since(
        [stream], T0_NS + seconds(5 * 365 * 86_400), T0_NS + seconds(5 * 365 * 86_400 + 60), version
    )
    assert not tracker.changed_since([stream], T0_NS - seconds(3600), T0_NS - seconds(60), version)
    for k in range(200):  # many wide changes merge into one interval: wider, never narrower
        tracker.record(stream, T0_NS + seconds(k * 86_400 * 30), T0_NS + seconds(k * 86_400 * 30 + 86_400))
    assert tracker.entries <= 64
    assert tracker.changed_since(
        [stream], T0_NS + seconds(199 * 86_400 * 30), T0_NS + seconds(199 * 86_400 * 30 + 1), version
    )


def test_the_cache_holds_at_most_its_bytes_and_never_an_answer_larger_than_them() -> None:
    clock = ManualClock(T0_NS)
    cache = QueryCache(1000, 300, ChangeTracker(), clock, max_bytes=10 * 2**20)
    frame = pd.DataFrame({"x": np.zeros(2**20 // 8 * 3)})  # 3 MiB
    for i in range(10):
        cache.put(("q", i), 0, frame)
        assert cache.bytes <= 10 * 2**20
    assert cache.bytes >= 9 * 2**20  # the newest three are kept
    assert cache.get(("q", 9), [], 0, 1) is frame and cache.get(("q", 0), [], 0, 1) is None
    cache.put("huge", 0, pd.DataFrame({"x": np.zeros(2**20 // 8 * 11)}))  # 11 MiB: not kept, nothing evicted for it
    assert cache.get("huge", [], 0, 1) is None and cache.get(("q", 9), [], 0, 1) is frame
