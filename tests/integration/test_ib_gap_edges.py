"""Where each kind of IB gap starts and ends (real ibapi client -> fake TWS, frozen clock): no later than the
last tick received on the stream, and when its data flows again or TWS acknowledges its new subscription —
after 1102, a stopped tick-by-tick subscription (reqMktData fallback), the stale-feed watchdog, a refusal
during a reconnect, the source stopping, and a restart after a crash.
"""

from __future__ import annotations

import asyncio

import pytest

from ib_stream.clock import NS_PER_SECOND, ManualClock
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.sources.ib import IbSource
from ib_stream.storage import TickStore
from ib_stream.store.downtime import last_tick_times, record_downtime
from ib_stream.store.gaps import Gap
from ib_stream.streaming import StreamingApp
from tests.conftest import T0_NS
from tests.integration.test_ib_source import ib_config, rows, running, stored, subscribed, until
from tests.support.fake_tws import AAPL, ES, FakeTWS

pytestmark = pytest.mark.timeout(20)
T = T0_NS // NS_PER_SECOND
S = NS_PER_SECOND
QUOTES_TRADES = Contract(265598, "AAPL", tick_types=(TickType.BID_ASK, TickType.LAST))
DEPTH = Contract(495512563, "ES", sec_type="FUT", exchange="CME", calendar="CMES",
                 tick_types=(TickType.DEPTH,), depth_rows=5)  # fmt: skip


def closed(store: TickStore, count: int) -> list[Gap] | None:
    gaps = [g for g in store.gaps.gaps() if g.end_ns is not None]
    return gaps if len(gaps) >= count else None


async def barrier_answered(tws: FakeTWS, after: str) -> None:
    """Wait until a reqCurrentTime (a barrier) followed the latest `after` request, and its answer was handled."""
    last = tws.requests_of(after)[-1]
    await until(lambda: [q for q in tws.requests_of("reqCurrentTime") if q.received_at > last.received_at], "barrier")
    await asyncio.sleep(0.2)


def quote(tws: FakeTWS, second: int, bid: float = 100.0) -> None:
    tws.emit_tick_by_tick(265598, "BidAsk", time=second, bid=bid, ask=bid + 0.5, bid_size=1, ask_size=2)


async def test_1102_alone_opens_a_gap_from_the_last_tick_until_the_resubscription_is_acknowledged(
    store: TickStore, clock: ManualClock
) -> None:
    # 1102 cancels and remakes every subscription: ticks between the cancel and the new request reaching TWS
    # would be lost, so even without a 1100 first the streams get a gap.
    async with running(store, clock, [QUOTES_TRADES]) as r:
        await subscribed(r.tws, 265598, "reqTickByTickData", "BidAsk")
        quote(r.tws, T)
        await stored(store, 265598, TickType.BID_ASK, 1)
        clock.advance(2.5)
        r.tws.connectivity_restored()
        await subscribed(r.tws, 265598, "reqTickByTickData", "BidAsk", count=2)
        gaps = await until(lambda: closed(store, 2), "gaps closed by the acknowledgement")
        assert {(g.tick_type, g.reason, g.code, g.start_ns, g.end_ns) for g in gaps} == {
            ("bid_ask", "disconnect", 1102, T0_NS, T0_NS + 5 * S // 2),  # from its last tick
            ("last", "disconnect", 1102, T0_NS, T0_NS + 5 * S // 2),  # no tick yet: from the run's start
        }
        assert len(r.tws.requests_of("reqCurrentTime")) >= 2  # one barrier per batch of subscriptions


async def test_a_stopped_tick_by_tick_subscription_is_a_gap_until_its_reqmktdata_fallback_is_acknowledged(
    store: TickStore, clock: ManualClock
) -> None:
    async with running(store, clock, [QUOTES_TRADES]) as r:
        await subscribed(r.tws, 265598, "reqTickByTickData", "Last")
        r.tws.emit_tick_by_tick(265598, "Last", time=T, price=100.0, size=1)
        await stored(store, 265598, TickType.LAST, 1)
        clock.advance(3)
        r.tws.competing_session(265598)  # 10189 on both tick-by-tick subscriptions, which stop
        await subscribed(r.tws, 265598, "reqMktData")
        gaps = await until(lambda: closed(store, 2), "gaps closed")
        assert {(g.tick_type, g.reason, g.code, g.start_ns, g.end_ns) for g in gaps} == {
            ("bid_ask", "subscription_refused", 10189, T0_NS, T0_NS + 3 * S),
            ("last", "subscription_refused", 10189, T0_NS, T0_NS + 3 * S),
        }
        assert all("falling back to reqMktData" in g.detail for g in gaps)
        r.tws.emit_mkt_data(265598, 1, price=99.0, size=5)
        r.tws.emit_mkt_data(265598, 2, price=99.5, size=6)
        assert (await stored(store, 265598, TickType.BID_ASK, 1))[0]["source"] == "ib_mkt"


async def test_the_watchdog_gap_starts_at_the_last_tick_and_ends_when_data_flows_again(
    store: TickStore, clock: ManualClock
) -> None:
    # T0 is a Friday 09:00 New York: XNAS's extended session is open. The resubscription helps: no reconnect,
    # but the silent stretch is a gap (only data ends it), and it is backfilled.
    contract = Contract(265598, "AAPL", tick_types=(TickType.BID_ASK,))
    async with running(store, clock, [contract], stale_after_seconds=0.4) as r:
        await subscribed(r.tws, 265598, "reqTickByTickData", "BidAsk")
        quote(r.tws, T)
        await stored(store, 265598, TickType.BID_ASK, 1)
        clock.advance(0.5)
        await subscribed(r.tws, 265598, "reqTickByTickData", "BidAsk", count=2)
        (gap,) = await until(lambda: store.gaps.gaps(), "stale gap")
        assert (gap.reason, gap.start_ns, gap.end_ns) == ("stale_feed", T0_NS, None)
        await barrier_answered(r.tws, "reqTickByTickData")
        assert store.gaps.gaps(open_only=True)  # acknowledged, but still silent: the gap lasts
        quote(r.tws, T + 1, bid=101.0)
        (gap,) = await until(lambda: closed(store, 1), "stale gap closed by data")
        assert gap.end_ns == (T + 1) * S + 1  # just after the start of the first tick's second
        assert r.source.status()["stale"] == [] and r.source.status()["reconnects"] == 0


async def test_a_refusal_on_reconnect_keeps_the_gap_open_until_data_flows(store: TickStore, clock: ManualClock) -> None:
    tws = FakeTWS([AAPL, ES])
    async with running(store, clock, [DEPTH], tws=tws) as r:
        await subscribed(r.tws, 495512563, "reqMktDepth")
        r.tws.refuse("reqMktDepth", 354, times=1)
        r.tws.drop_connections()
        (gap,) = await until(lambda: store.gaps.gaps(), "disconnect gap")
        await until(lambda: len(r.tws.requests_of("reqMktDepth")) == 2, "the refused request")
        await until(lambda: r.source.status()["not_subscribed"], "the refusal handled")
        clock.advance(2)
        r.tws.connectivity_restored()  # 1102: resubscribe, and this time depth is served (and acknowledged)
        await subscribed(r.tws, 495512563, "reqMktDepth", count=3)
        await barrier_answered(r.tws, "reqMktDepth")
        assert [g.end_ns for g in store.gaps.gaps()] == [None]  # refused: only data ends it
        clock.advance(1)
        r.tws.emit_depth(495512563, 0, 0, 1, 5999.75, 4)
        await stored(store, 495512563, TickType.DEPTH, 1)
        (gap,) = await until(lambda: closed(store, 1), "gap closed by data")
        assert (gap.reason, gap.start_ns, gap.end_ns) == ("disconnect", T0_NS, T0_NS + 3 * S)


async def test_stopping_the_source_opens_a_gap_at_each_streams_last_tick(store: TickStore, clock: ManualClock) -> None:
    store.gaps.begin_run(T0_NS, "ib")
    async with running(store, clock, [QUOTES_TRADES]) as r:
        await subscribed(r.tws, 265598, "reqTickByTickData", "BidAsk")
        clock.advance(4)
        quote(r.tws, T + 3)
        await stored(store, 265598, TickType.BID_ASK, 1)
        clock.advance(2)
    gaps = store.gaps.gaps()
    assert {(g.tick_type, g.reason, g.detail, g.start_ns, g.end_ns) for g in gaps} == {
        ("bid_ask", "disconnect", "IB source stopped", (T + 3) * S, None),  # its last tick
        ("last", "disconnect", "IB source stopped", T0_NS, None),  # none: since the run started
    }
    store.gaps.end_run(clock.now_ns())  # what the service does after its sources stopped
    store.gaps.begin_run(T0_NS + 60 * S, "ib")  # the next start ends them where the run ended
    assert [g.end_ns for g in store.gaps.gaps()] == [T0_NS + 6 * S] * 2


async def test_a_restart_after_a_crash_gaps_each_stream_from_its_last_stored_tick_until_it_is_subscribed(
    store: TickStore, clock: ManualClock
) -> None:
    # The previous run crashed: last heartbeat at T+30, but bid_ask's last stored tick is at T+10 (its later
    # ticks were received, not yet durable). The restart at T+60 records the downtime from T+10 for bid_ask,
    # left open until the IB source has its subscription acknowledged at T+65.
    contract = QUOTES_TRADES
    store.gaps.begin_run(T0_NS, "ib")
    store.append_batch_sync(265598, TickType.BID_ASK, [{"ts": (T + 10) * S, "bid_price": 1.0, "bid_size": 1.0,
                                                        "ask_price": 2.0, "ask_size": 1.0}], source="ib_tbt")  # fmt: skip
    store.gaps.heartbeat(T0_NS + 30 * S)
    clock.set(T0_NS + 60 * S)
    previous = store.gaps.begin_run(clock.now_ns(), "ib")
    last = last_tick_times(store, [contract])
    assert last == {StreamKey(265598, TickType.BID_ASK): (T + 10) * S}
    assert record_downtime(store.gaps, previous, clock.now_ns(), [contract], last_ticks=last, open_ended=True) == 2
    assert {(g.tick_type, g.start_ns, g.end_ns) for g in store.gaps.gaps()} == {
        ("bid_ask", (T + 10) * S, None),
        ("last", (T + 30) * S, None),
    }
    clock.advance(5)
    with FakeTWS([AAPL, ES]) as tws:
        app = StreamingApp(store, [contract])
        source = IbSource(ib_config(tws.port), [contract], clock)
        await app.start([source])
        try:
            await subscribed(tws, 265598, "reqTickByTickData", "Last")
            gaps = await until(lambda: closed(store, 2), "downtime gaps closed")
            assert {(g.reason, g.end_ns) for g in gaps} == {("service_crash", T0_NS + 65 * S)}
            assert all("last tick stored" in g.detail for g in gaps if g.tick_type == "bid_ask")
        finally:
            await app.stop()
    assert len(rows(store, 265598, TickType.BID_ASK)) == 1
