"""IbSource end to end: the real ibapi client → fake TWS on loopback → IbSource → StreamingApp → TickStore."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from ib_stream.clock import NS_PER_SECOND, ManualClock
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.settings import IbConfig
from ib_stream.sources.ib import IbSource
from ib_stream.storage import TickStore
from ib_stream.store.schema import table_to_records
from ib_stream.streaming import StreamingApp
from tests.conftest import T0_NS
from tests.support.coverage_scenario import until
from tests.support.fake_tws import AAPL, ES, FakeTWS

pytestmark = pytest.mark.timeout(10)

T = T0_NS // NS_PER_SECOND  # IB tick-by-tick time: whole epoch seconds
TBT = (TickType.BID_ASK, TickType.LAST, TickType.ALL_LAST, TickType.MID_POINT)
AAPL_C = Contract(265598, "AAPL", tick_types=TBT)
ES_C = Contract(
    495512563, "ES", sec_type="FUT", exchange="CME", calendar="CMES", tick_types=(TickType.DEPTH,), depth_rows=5
)


@dataclass
class Running:
    tws: FakeTWS
    source: IbSource
    store: TickStore


def ib_config(port: int, **over: Any) -> IbConfig:
    values: dict[str, Any] = {
        "ports": (port,),
        "client_id": 3,
        "connect_timeout_seconds": 2,
        "reconnect_initial_seconds": 0.05,
        "reconnect_max_seconds": 0.2,
        "max_tick_by_tick_subscriptions": 8,
        "backfill_delay_seconds": 0,  # the clock is frozen: a gap's last second is over when the clock says so
    }
    return IbConfig(**(values | over))


@asynccontextmanager
async def running(
    store: TickStore, clock: ManualClock, contracts: list[Contract], tws: FakeTWS | None = None, **config: Any
) -> AsyncIterator[Running]:
    """Start a fake TWS (or use `tws`) and an IbSource feeding a real StreamingApp; stop both afterwards."""
    tws = tws or FakeTWS([AAPL, ES])
    with tws:
        app = StreamingApp(store, contracts)
        source = IbSource(ib_config(tws.port, **config), contracts, clock)
        await app.start([source])
        try:
            yield Running(tws, source, store)
        finally:
            await app.stop()
        assert tws.protocol_errors == []


async def subscribed(tws: FakeTWS, con_id: int, request: str, kind: str | None = None, count: int = 1) -> None:
    """Wait (without blocking the loop) until `count` requests of this kind reached the fake and one is active."""
    await until(
        lambda: (
            len(tws.requests_of(request, **({"tickType": kind} if kind else {}))) >= count
            and tws.subscriptions(con_id, request, kind)
        ),
        f"{request} {kind or ''} #{count}",
    )


def rows(store: TickStore, con_id: int, tick_type: TickType) -> list[dict[str, Any]]:
    return table_to_records(store.engine.read_stream(StreamKey(con_id, tick_type), 0, 2**62))


async def stored(store: TickStore, con_id: int, tick_type: TickType, count: int) -> list[dict[str, Any]]:
    await until(lambda: len(rows(store, con_id, tick_type)) >= count, f"{count} {tick_type} ticks stored")
    return rows(store, con_id, tick_type)


async def test_tick_by_tick_ticks_are_stored_exactly(store: TickStore, clock: ManualClock) -> None:
    async with running(store, clock, [AAPL_C]) as r:
        for kind in ("BidAsk", "Last", "AllLast", "MidPoint"):
            await subscribed(r.tws, 265598, "reqTickByTickData", kind)
        for i in range(3):
            r.tws.emit_tick_by_tick(
                265598, "BidAsk", time=T + i, bid=100 + i, ask=100.5 + i, bid_size=10 + i, ask_size=20 + i,
                bid_past_low=i == 1,
            )  # fmt: skip
        r.tws.emit_tick_by_tick(265598, "Last", time=T, price=101.25, size=7, exchange="ISLAND", special_conditions="I")
        r.tws.emit_tick_by_tick(265598, "Last", time=T, price=101.5, size=3, exchange="NYSE")
        r.tws.emit_tick_by_tick(265598, "AllLast", time=T + 1, price=99.75, size=100, exchange="ARCA", unreported=True)
        r.tws.emit_tick_by_tick(265598, "MidPoint", time=T + 2, mid_point=100.25)

        quotes = await stored(store, 265598, TickType.BID_ASK, 3)
        assert [(q["ts"], q["bid_price"], q["ask_price"], q["bid_size"], q["ask_size"]) for q in quotes] == [
            ((T + i) * NS_PER_SECOND, 100.0 + i, 100.5 + i, 10.0 + i, 20.0 + i) for i in range(3)
        ]
        assert [q["bid_past_low"] for q in quotes] == [False, True, False]
        assert {q["source"] for q in quotes} == {"ib_tbt"}
        trades = await stored(store, 265598, TickType.LAST, 2)
        assert [(t["ts"], t["price"], t["size"], t["exchange"], t["conditions"]) for t in trades] == [
            (T * NS_PER_SECOND, 101.25, 7.0, "ISLAND", "I"),
            (T * NS_PER_SECOND, 101.5, 3.0, "NYSE", ""),
        ]
        assert trades[0]["seq"] < trades[1]["seq"]  # same second: arrival order kept in seq
        all_last = await stored(store, 265598, TickType.ALL_LAST, 1)
        assert [(t["price"], t["size"], t["exchange"], t["unreported"]) for t in all_last] == [
            (99.75, 100.0, "ARCA", True)
        ]
        mids = await stored(store, 265598, TickType.MID_POINT, 1)
        assert [(m["ts"], m["mid_point"], m["source"]) for m in mids] == [((T + 2) * NS_PER_SECOND, 100.25, "ib_tbt")]
        await asyncio.sleep(0.2)  # nothing more arrives
        assert len(rows(store, 265598, TickType.BID_ASK)) == 3 and len(rows(store, 265598, TickType.LAST)) == 2
        status = r.source.status()
        assert status["connected"] and status["port"] == r.tws.port
        assert status["subscriptions"] == {265598: {t.value: "tbt" for t in TBT}}


async def test_refused_tick_by_tick_falls_back_to_mkt_data(store: TickStore, clock: ManualClock) -> None:
    tws = FakeTWS([AAPL, ES])
    tws.refuse("reqTickByTickData", 10190, times=None)
    async with running(store, clock, [AAPL_C], tws) as r:
        await subscribed(tws, 265598, "reqMktData")
        await until(lambda: len(r.source.status()["subscriptions"].get(265598, {})) == 2, "fallback settled")
        status = r.source.status()
        assert status["subscriptions"] == {265598: {"bid_ask": "mkt", "last": "mkt"}}
        assert set(status["not_subscribed"][265598]) == {"all_last", "mid_point"}
        assert len(tws.requests_of("reqMktData")) == 1
        # bid, ask (each price followed by its size), then a first LAST (primes) and a trade.
        tws.emit_mkt_data(265598, 1, price=100.0, size=5)
        tws.emit_mkt_data(265598, 2, price=100.5, size=6)
        tws.emit_mkt_data(265598, 4, price=100.25, size=1)
        tws.emit_mkt_data(265598, 4, price=100.5, size=2)
        quotes = await stored(store, 265598, TickType.BID_ASK, 1)
        assert [(q["bid_price"], q["bid_size"], q["ask_price"], q["ask_size"], q["source"]) for q in quotes] == [
            (100.0, 5.0, 100.5, 6.0, "ib_mkt")
        ]
        trades = await stored(store, 265598, TickType.LAST, 1)
        assert [(t["price"], t["size"], t["source"], t["ts"]) for t in trades] == [(100.5, 2.0, "ib_mkt", T0_NS)]


async def test_depth_updates_are_stored_as_depth_ticks(store: TickStore, clock: ManualClock) -> None:
    async with running(store, clock, [ES_C]) as r:
        await subscribed(r.tws, 495512563, "reqMktDepth")
        assert r.tws.requests_of("reqMktDepth")[0]["numRows"] == 5
        r.tws.emit_depth(495512563, 0, 0, 1, 6000.0, 10)
        r.tws.emit_depth(495512563, 0, 0, 0, 6000.25, 12)
        r.tws.emit_depth(495512563, 0, 1, 1, 6000.0, 15)
        r.tws.emit_error(495512563, "reqMktDepth", 317)  # book reset: logged, nothing stored
        r.tws.emit_depth(495512563, 1, 0, 1, 5999.75, 4, market_maker="MM1")
        depth = await stored(store, 495512563, TickType.DEPTH, 4)
        assert [
            (d["side"], d["position"], d["operation"], d["price"], d["size"], d["market_maker"]) for d in depth
        ] == [
            ("bid", 0, "insert", 6000.0, 10.0, ""),
            ("ask", 0, "insert", 6000.25, 12.0, ""),
            ("bid", 0, "update", 6000.0, 15.0, ""),
            ("bid", 1, "insert", 5999.75, 4.0, "MM1"),
        ]
        assert {d["source"] for d in depth} == {"ib_depth"}
        assert r.source.status()["subscriptions"] == {495512563: {"depth": "depth"}}


async def test_dropped_connection_reconnects_and_resubscribes(store: TickStore, clock: ManualClock) -> None:
    async with running(store, clock, [AAPL_C]) as r:
        await subscribed(r.tws, 265598, "reqTickByTickData", "MidPoint")
        r.tws.emit_tick_by_tick(265598, "MidPoint", time=T, mid_point=100.0)
        await stored(store, 265598, TickType.MID_POINT, 1)
        assert r.tws.drop_connections() == 1
        await until(lambda: sum(c.ready for c in r.tws.clients) >= 2, "second connection")
        await subscribed(r.tws, 265598, "reqTickByTickData", "MidPoint", count=2)
        r.tws.emit_tick_by_tick(265598, "MidPoint", time=T + 5, mid_point=101.0)
        mids = await stored(store, 265598, TickType.MID_POINT, 2)
        assert [(m["ts"], m["mid_point"]) for m in mids] == [
            (T * NS_PER_SECOND, 100.0),
            ((T + 5) * NS_PER_SECOND, 101.0),
        ]
        await until(lambda: r.source.status()["connected"], "connected again")
        status = r.source.status()
        assert status["reconnects"] == 1
        assert len(status["subscriptions"][265598]) == 4
        gaps = await until(lambda: [g for g in store.gaps.gaps() if g.end_ns is not None], "gaps closed")
        assert sorted(g.tick_type for g in gaps) == sorted(t.value for t in TBT)  # one per stream
        assert {(g.reason, g.detail, g.code) for g in gaps} == {("disconnect", "IB connection closed", None)}


async def test_connectivity_lost_then_restored_records_gap_and_resubscribes(
    store: TickStore, clock: ManualClock
) -> None:
    async with running(store, clock, [AAPL_C]) as r:
        await subscribed(r.tws, 265598, "reqTickByTickData", "BidAsk")
        r.tws.connectivity_lost()
        gaps = await until(lambda: store.gaps.gaps(), "gap on 1100")
        assert len(gaps) == len(TBT)
        assert gaps[0].reason == "disconnect" and gaps[0].code == 1100
        assert gaps[0].detail.startswith("IB 1100: connectivity between TWS and IB lost")
        assert gaps[0].end_ns is None and gaps[0].start_ns == T0_NS
        clock.advance(7)
        r.tws.connectivity_restored()
        await subscribed(r.tws, 265598, "reqTickByTickData", "BidAsk", count=2)
        assert len(r.tws.requests_of("cancelTickByTickData")) >= 1
        await until(lambda: store.gaps.gaps()[0].end_ns is not None, "gap closed on 1102")
        r.tws.emit_tick_by_tick(265598, "BidAsk", time=T + 9, bid=1, ask=2, bid_size=3, ask_size=4)
        quotes = await stored(store, 265598, TickType.BID_ASK, 1)
        assert quotes[0]["ts"] == (T + 9) * NS_PER_SECOND
        status = r.source.status()
        assert status["reconnects"] == 0 and len(store.gaps.gaps()) == len(TBT)
        assert {g.end_ns for g in store.gaps.gaps()} == {T0_NS + 7 * NS_PER_SECOND}
        assert len(r.tws.subscriptions(265598, "reqTickByTickData", "BidAsk")) == 1


async def test_unknown_contract_and_tick_by_tick_limit_are_reported(store: TickStore, clock: ManualClock) -> None:
    order = (TickType.ALL_LAST, TickType.MID_POINT, TickType.BID_ASK, TickType.LAST)
    contracts = [Contract(999_999, "NOPE"), Contract(265598, "AAPL", tick_types=order)]
    async with running(store, clock, contracts, max_tick_by_tick_subscriptions=2) as r:
        await subscribed(r.tws, 265598, "reqMktData")
        assert sorted(s.tick_type or "" for s in r.tws.subscriptions(265598, "reqTickByTickData")) == [
            "AllLast",
            "MidPoint",
        ]
        status = r.source.status()
        assert status["subscriptions"] == {
            265598: {"all_last": "tbt", "mid_point": "tbt", "bid_ask": "mkt", "last": "mkt"}
        }
        assert list(status["not_subscribed"]) == [999_999]
        assert status["not_subscribed"][999_999]["contract"].startswith("IB 200")
        assert r.tws.requests_of("reqTickByTickData", conId=999_999) == []


async def test_watchdog_resubscribes_then_reconnects_a_stalled_feed(store: TickStore, clock: ManualClock) -> None:
    # T0 is a Friday 09:00 New York: XNAS's extended session is open.
    async with running(store, clock, [AAPL_C], stale_after_seconds=0.4) as r:
        await subscribed(r.tws, 265598, "reqTickByTickData", "BidAsk")
        r.tws.stall()
        clock.advance(0.3)
        checks = r.source.watchdog_checks
        await until(lambda: r.source.watchdog_checks >= checks + 2, "watchdog checks")
        assert len(r.tws.requests_of("reqTickByTickData", tickType="BidAsk")) == 1  # not stale yet
        clock.advance(0.2)
        await subscribed(r.tws, 265598, "reqTickByTickData", "BidAsk", count=2)
        assert r.source.status()["stale"] == [265598] and r.source.status()["reconnects"] == 0
        clock.advance(0.5)
        await until(lambda: r.source.status()["reconnects"] == 1, "reconnect after the resubscribe did not help")
        gaps = await until(lambda: store.gaps.gaps(), "stale feed gap")
        assert {(g.reason, g.detail) for g in gaps} == {
            ("stale_feed", "stale feed: no data from AAPL (265598) for 0.4s")
        }
        assert {g.start_ns for g in gaps} == {T0_NS}  # the last data, not the resubscribe
        r.tws.resume()
        await subscribed(r.tws, 265598, "reqTickByTickData", "BidAsk", count=3)
        r.tws.emit_tick_by_tick(265598, "BidAsk", time=T, bid=1, ask=2, bid_size=3, ask_size=4)
        await stored(store, 265598, TickType.BID_ASK, 1)
        assert r.source.status()["stale"] == []


async def test_watchdog_stays_quiet_while_the_market_is_closed(store: TickStore, clock: ManualClock) -> None:
    clock.set(T0_NS + 24 * 3600 * NS_PER_SECOND)  # Saturday: XNAS closed
    async with running(store, clock, [AAPL_C], stale_after_seconds=0.4) as r:
        await subscribed(r.tws, 265598, "reqTickByTickData", "BidAsk")
        clock.advance(3600)
        checks = r.source.watchdog_checks
        await until(lambda: r.source.watchdog_checks >= checks + 3, "watchdog checks")
        assert len(r.tws.requests_of("reqTickByTickData", tickType="BidAsk")) == 1
        assert r.source.status()["stale"] == [] and store.gaps.gaps() == []


async def test_ports_are_tried_in_order(store: TickStore, clock: ManualClock) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    tws = FakeTWS([AAPL, ES]).start()
    try:
        async with running(store, clock, [AAPL_C], FakeTWS([AAPL]), ports=(closed_port, tws.port)) as r:
            await subscribed(tws, 265598, "reqTickByTickData", "BidAsk")
            assert r.source.status()["port"] == tws.port and r.source.status()["connected"]
            assert r.tws.requests == []  # the fake `running` started is not in the list of ports
    finally:
        tws.stop()
