"""The one bar engine at its known edges: the live seed's depth book (bug 1 of the restructuring issue) and OBI
evaluated on whole book updates, never on a half-applied book — each checked on the tick path, the rollup path
and the live path against numbers worked out by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ib_stream.analytics.book import top_volumes
from ib_stream.analytics.request import BarsRequest
from ib_stream.clock import NS_PER_SECOND, ManualClock
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.live.feed import LiveBarFeed
from ib_stream.orderflow.service import OrderFlow
from ib_stream.settings import StorageConfig
from ib_stream.storage import TickStore
from ib_stream.streaming import StreamingApp
from tests.conftest import CONTRACT, T0_NS

MINUTE = 60 * NS_PER_SECOND
AAPL = Contract(CONTRACT, "AAPL", calendar="XNAS", tick_types=(TickType.BID_ASK, TickType.LAST, TickType.DEPTH))


def level(ts: int, side: str, price: float, size: float) -> dict[str, Any]:
    return {
        "ts": ts,
        "side": side,
        "position": 0,
        "operation": "insert",
        "price": price,
        "size": size,
        "by_price": True,
    }


@pytest.fixture
def store(tmp_path: Path, clock: ManualClock) -> Any:
    config = StorageConfig(data_root=tmp_path / "root", fsync_interval_ms=0, compaction_delay_seconds=0,
                           retired_file_grace_seconds=0)  # fmt: skip
    opened = TickStore(config, clock).open()
    yield opened
    opened.close()


async def test_live_bars_start_from_the_book_the_batch_path_rebuilds(store: TickStore, clock: ManualClock) -> None:
    # A bid rests from 13:50, an ask from 14:10; the feed starts at 14:20. The book in force then holds both
    # (10 vs 10): OBI 0. Starting the book empty at the hour boundary (14:00) would see the ask alone: OBI -1.
    clock.set(T0_NS - 10 * MINUTE)
    store.append_batch_sync(CONTRACT, TickType.DEPTH, [level(T0_NS - 10 * MINUTE, "bid", 99.0, 10.0)], source="test")
    clock.set(T0_NS + 10 * MINUTE)
    store.append_batch_sync(CONTRACT, TickType.DEPTH, [level(T0_NS + 10 * MINUTE, "ask", 101.0, 10.0)], source="test")
    start = T0_NS + 20 * MINUTE
    clock.set(start)
    app = StreamingApp(store, [AAPL])
    await app.start([])
    feed = LiveBarFeed.create(app, AAPL, "1m", obi_source="depth")
    try:
        await feed.open()
        assert feed.sub is not None
        await app.publish(
            CONTRACT, TickType.LAST, [{"ts": start + 30 * NS_PER_SECOND, "price": 100.0, "size": 1.0}], "t"
        )
        rows = await feed.update(await feed.sub.get(5.0))
    finally:
        feed.close()
        await app.stop()
    (live,) = [r for r in rows if r["ts"] == start]
    batch = OrderFlow(store.engine, AAPL).bars(BarsRequest(CONTRACT, start, start + MINUTE, "1m", obi_source="depth"))
    row = batch.table.to_pylist()[0]
    assert (live["obi_open"], live["obi_close"]) == (0.0, 0.0)  # (10 - 10) / (10 + 10)
    assert (row["obi_open"], row["obi_close"]) == (0.0, 0.0)


def book_row_market(store: TickStore, clock: ManualClock) -> tuple[int, int]:
    """One imported full-book row at 14:00:30 (bids first, then asks, one timestamp), then one more update."""
    row_ts = T0_NS + 30 * NS_PER_SECOND
    clock.set(row_ts)
    store.append_batch_sync(
        CONTRACT,
        TickType.DEPTH,
        [
            level(row_ts, "bid", 99.0, 10.0),
            level(row_ts, "bid", 98.0, 10.0),
            level(row_ts, "ask", 101.0, 5.0),
            level(row_ts, "ask", 102.0, 5.0),
        ],
        source="import",
    )
    later = T0_NS + 45 * NS_PER_SECOND
    clock.set(later)
    store.append_batch_sync(CONTRACT, TickType.DEPTH, [level(later, "ask", 101.0, 20.0)], source="import")
    return row_ts, later


def test_top_volumes_are_taken_after_whole_book_updates(store: TickStore, clock: ManualClock) -> None:
    row_ts, later = book_row_market(store, clock)
    depth = store.engine.read_stream(StreamKey(CONTRACT, TickType.DEPTH), 0, 2**62)
    volumes = top_volumes(depth, 10).to_pylist()
    assert [
        (v["ts"].value if hasattr(v["ts"], "value") else v["ts"], v["bid_volume"], v["ask_volume"]) for v in volumes
    ] == [
        (row_ts, 20.0, 10.0),
        (later, 20.0, 25.0),
    ]


async def test_obi_is_never_taken_from_a_half_applied_book(store: TickStore, clock: ManualClock) -> None:
    # Per tick, the row would pass through +1 (bids alone) before settling: two updates, not five events.
    book_row_market(store, clock)
    first, second = (20 - 10) / (20 + 10), (20 - 25) / (20 + 25)
    want = {"obi_open": first, "obi_high": first, "obi_low": second, "obi_close": second, "obi_count": 2}
    request = BarsRequest(CONTRACT, T0_NS, T0_NS + MINUTE, "1m", ("obi",), obi_source="depth")
    ticks = OrderFlow(store.engine, AAPL, use_rollups=False, use_cache=False).bars(request).table.to_pylist()[0]
    assert {k: ticks[k] for k in want} == pytest.approx(want)

    clock.set(T0_NS + 3 * 3600 * NS_PER_SECOND)  # the hour closed: archived, depth rolled up
    store.run_archival()
    store.run_compaction()
    assert store.run_rollups() == 2  # the OBI rollup and the heatmap rollup of the depth
    rolled = OrderFlow(store.engine, AAPL, use_cache=False).bars(request).table.to_pylist()[0]
    assert {k: rolled[k] for k in want} == pytest.approx(want)

    # Live: the fan-out hands over each appended batch whole (the row is one batch): no upsert ever shows the
    # half-applied book; and fed a tick at a time, the bar still ends on the whole updates.
    depth = StreamKey(CONTRACT, TickType.DEPTH)
    records = [(depth, {**r, "ts": r["ts"].value}) for r in store.engine.read_stream(depth, 0, 2**62).to_pylist()]
    for batches in ([records[:4], records[4:]], [[item] for item in records]):
        feed = LiveBarFeed.create(StreamingApp(store, [AAPL]), AAPL, "1m", obi_source="depth")
        upserts = [row for batch in batches for row in feed.builder.update(batch)]
        final = [r for r in upserts if r["ts"] == T0_NS][-1]
        assert {k: final[k] for k in want} == pytest.approx(want)
        if len(batches) == 2:
            assert all(r["obi_high"] == pytest.approx(first) for r in upserts)
