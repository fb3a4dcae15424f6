"""The replay source re-plays a stored range into the live fan-out, labelled and ordered as stored."""

from __future__ import annotations

import asyncio

from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.settings import ReplayConfig
from ib_stream.sources.replay import ReplaySource
from ib_stream.storage import TickStore
from ib_stream.streaming import StreamingApp
from ib_stream.times import iso_us
from tests.conftest import CONTRACT, T0_NS, quote, seconds, trade

CONTRACTS = [Contract(CONTRACT, "AAPL", tick_types=(TickType.BID_ASK, TickType.LAST))]


async def test_replay_fans_out_every_stored_tick_of_the_range_in_time_order(store: TickStore) -> None:
    await store.append_batch(CONTRACT, "bid_ask", [quote(T0_NS + seconds(i), i) for i in range(0, 20, 2)])
    await store.append_batch(CONTRACT, "last", [trade(T0_NS + seconds(i), i) for i in range(1, 20, 2)])
    await store.append_batch(CONTRACT, "last", [trade(T0_NS + seconds(30), 99)])  # outside the range
    app = StreamingApp(store, CONTRACTS)
    sub = app.subscribe(CONTRACT, [TickType.BID_ASK, TickType.LAST])
    config = ReplayConfig(start_time=iso_us(T0_NS), end_time=iso_us(T0_NS + seconds(20)), speed=0)
    await asyncio.wait_for(ReplaySource(config, CONTRACTS).run(app), 10)
    items = await sub.get(timeout=1)
    assert [record["ts"] for _, record in items] == [T0_NS + seconds(i) for i in range(20)]
    for stream, record in items:
        expected = TickType.BID_ASK if "bid_price" in record else TickType.LAST
        assert stream == StreamKey(CONTRACT, expected), record
    assert store.buffer.next_seq(StreamKey(CONTRACT, TickType.LAST)) == 12  # replay stores nothing


async def test_replay_paces_at_the_requested_speed(store: TickStore) -> None:
    await store.append_batch(CONTRACT, "last", [trade(T0_NS + seconds(i), i) for i in range(3)])
    app = StreamingApp(store, CONTRACTS)
    config = ReplayConfig(start_time=iso_us(T0_NS), end_time=iso_us(T0_NS + seconds(3)), speed=4)
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(ReplaySource(config, CONTRACTS).run(app), 10)
    assert 0.4 <= asyncio.get_running_loop().time() - started < 2.0  # 2 s of data at 4x = 0.5 s
