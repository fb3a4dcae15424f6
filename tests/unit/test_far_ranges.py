"""Bounded cost over long ranges: a request spanning years reads only the hours that hold data. The stored
rollups, the depth rollups and the book replay each visit the partitions with ticks (plus the edges) — never one
per hour or day of the empty years around them — and still give the answer of the tick path."""

from __future__ import annotations

import random
from typing import Any

import pytest

from ib_stream.analytics.request import BarsRequest
from ib_stream.clock import NS_PER_SECOND, ManualClock
from ib_stream.domain import StreamKey, TickType
from ib_stream.orderflow.service import OrderFlow
from ib_stream.storage import TickStore
from ib_stream.store import depth_rollups, rollups
from ib_stream.store import query as query_module
from ib_stream.store.depth_rollups import depth_obi_rows, update_depth_rollups
from ib_stream.store.rollups import load_rows, update_rollups
from ib_stream.store.snapshots import book_at
from tests.conftest import CONTRACT, T0_NS
from tests.unit.test_book import random_levels
from tests.unit.test_depth_rollups import AAPL, assert_same
from tests.unit.test_rollups import archive_all, random_day, write_day

HOUR = 3600 * NS_PER_SECOND
YEAR = 365 * 24 * HOUR


class Counter:
    """Counts the calls of one method while the test runs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> None:
        self.calls = 0
        real = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


def test_rolled_up_bars_over_years_read_only_the_hours_with_trades(
    store: TickStore, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    trades, quotes = random_day(3, 800, 1500, 3 * HOUR)
    write_day(store, trades, quotes)
    archive_all(store, clock, T0_NS + 5 * HOUR)
    assert update_rollups(store.engine) >= 3
    checks = Counter(monkeypatch, rollups._Catalog, "hot_in")  # asked once or twice per partition visited
    start, end = T0_NS - 2 * YEAR, T0_NS + 3 * YEAR
    rows = load_rows(store.engine, StreamKey(CONTRACT, TickType.LAST), start, start, end)
    assert rows is not None
    assert checks.calls <= 12, checks.calls  # the hours with trades (and quotes before), not 43 800
    request = BarsRequest(CONTRACT, start, end, "24h", ("ohlc", "cvd"))
    rolled = OrderFlow(store.engine, AAPL, depth_volumes=None, use_cache=False).bars(request)
    ticks = OrderFlow(store.engine, AAPL, depth_volumes=None, use_rollups=False, use_cache=False).bars(request)
    assert rolled.table.num_rows == ticks.table.num_rows == 5 * 365 + 1
    assert_same(rolled.table, ticks.table, "five years of 24h bars")


def depth_events(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    events = random_levels(rng, n)
    for i, event in enumerate(events):
        event["ts"] = T0_NS + i * (2 * HOUR // n)
    return events


def test_depth_over_years_reads_only_the_hours_with_depth(
    store: TickStore, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.append_batch_sync(CONTRACT, "depth", depth_events(2000, 5), source="test")
    clock.set(T0_NS + 4 * HOUR)
    store.run_archival()
    store.run_snapshots()
    assert update_depth_rollups(store.engine) == 2
    checks = Counter(monkeypatch, depth_rollups.DepthCatalog, "hot_in")
    served = depth_obi_rows(store.engine, CONTRACT, T0_NS - YEAR, T0_NS + 10 * YEAR, 10)
    assert served is not None and int(served[0]["events"].sum()) == 2000
    assert checks.calls <= 3, checks.calls  # the first hour and the two with depth, not 96 000


def test_the_book_at_a_far_instant_replays_only_the_days_with_depth(
    store: TickStore, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.append_batch_sync(CONTRACT, "depth", depth_events(500, 9), source="test")
    clock.set(T0_NS + 4 * HOUR)
    store.run_archival()  # no snapshots: a full replay
    reads = Counter(monkeypatch, query_module.QueryEngine, "read_stream")
    far = book_at(store.engine, CONTRACT, T0_NS + 170 * YEAR)
    near = book_at(store.engine, CONTRACT, T0_NS + 3 * HOUR)
    assert reads.calls <= 4, reads.calls  # one day each, not 62 000
    assert far.book.levels(10) == near.book.levels(10) and far.deltas_replayed == near.deltas_replayed == 500


def test_a_limited_read_stops_at_the_file_after_its_last_tick(
    store: TickStore, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    trades, quotes = random_day(8, 3000, 6000, 5 * HOUR)
    write_day(store, trades, quotes)
    archive_all(store, clock, T0_NS + 7 * HOUR)
    stream = StreamKey(CONTRACT, TickType.BID_ASK)
    everything = store.engine.read_stream(stream, T0_NS - HOUR, T0_NS + 6 * HOUR)
    files = Counter(monkeypatch, query_module, "read_parquet_range")
    for limit in (1, 17, 2500, everything.num_rows, everything.num_rows + 5):
        files.calls = 0
        first = store.engine.read_stream(stream, T0_NS - HOUR, T0_NS + 6 * HOUR, limit=limit)
        assert first.equals(everything.slice(0, limit)), limit
        needed = len({(ts - ts % HOUR) for ts in everything.column("ts").to_numpy().view("int64")[:limit]})
        assert files.calls <= needed + 1, (limit, files.calls, needed)
    assert store.engine.count(stream, T0_NS - HOUR, T0_NS + 6 * HOUR) == everything.num_rows
    inner = (T0_NS + HOUR + 17, T0_NS + 3 * HOUR + 5)
    assert store.engine.count(stream, *inner) == store.engine.read_stream(stream, *inner).num_rows
