"""Real ibapi client -> fake TWS: gaps backfilled with reqHistoricalTicks (paced, no duplicates), the IB samples
replayed through the IB source into the store, and the ibapi 4096-byte reader pitfall.
"""

from __future__ import annotations

import gzip
import json
import time
from typing import Any

import pytest

from ib_stream.analytics.book import OrderBook
from ib_stream.clock import NS_PER_SECOND, ManualClock
from ib_stream.domain import Contract, TickType
from ib_stream.sources.ib_backfill import Backfiller
from ib_stream.storage import TickStore
from tests.conftest import T0_NS, requires_shared_data
from tests.integration.test_ib_source import rows, running, stored, subscribed, until
from tests.support import ib_samples
from tests.support.fake_tws import AAPL, ES, BidAskTick, FakeTWS, LastTick
from tests.support.fake_tws_messages import tick_by_tick

pytestmark = pytest.mark.timeout(30)
T = T0_NS // NS_PER_SECOND
QUOTES_TRADES = Contract(265598, "AAPL", tick_types=(TickType.BID_ASK, TickType.LAST))


def trade_shape(ticks: list[dict[str, Any]]) -> list[tuple[int, float, float, str]]:
    return [(t["ts"] // NS_PER_SECOND - T, t["price"], t["size"], t["source"]) for t in ticks]


async def test_a_disconnect_gap_is_backfilled_without_duplicates(store: TickStore, clock: ManualClock) -> None:
    tws = FakeTWS([AAPL, ES])
    # IB's history: the trade at T was also received live; T+12 is after the gap; T+5 traded twice alike.
    history = [LastTick(T + s, 100.0 + s, 1) for s in (0, 3, 5, 5, 12)]
    tws.add_historical_ticks(265598, "TRADES", history)
    tws.add_historical_ticks(265598, "BID_ASK", [BidAskTick(T + 4, 99.0, 101.0, 5, 6)])
    async with running(store, clock, [QUOTES_TRADES], tws=tws, pacing_retry_seconds=0.1) as r:
        await subscribed(r.tws, 265598, "reqTickByTickData", "Last")
        r.tws.emit_tick_by_tick(265598, "Last", time=T, price=100.0, size=1)
        await stored(store, 265598, TickType.LAST, 1)
        r.tws.drop_connections()  # gap opens at T0 (the clock)
        await until(lambda: store.gaps.gaps(), "gap opened")
        clock.advance(10)
        await subscribed(r.tws, 265598, "reqTickByTickData", "Last", count=2)
        gaps = await until(
            lambda: (
                [g for g in store.gaps.gaps() if g.backfill == "done"]
                if len([g for g in store.gaps.gaps() if g.backfill == "done"]) == 2
                else None
            ),
            "both gaps backfilled",
        )
        assert {(g.start_ns, g.end_ns, g.reason) for g in gaps} == {(T0_NS, T0_NS + 10 * NS_PER_SECOND, "disconnect")}
        trades = rows(store, 265598, TickType.LAST)
        assert sorted(trade_shape(trades)) == [
            (0, 100.0, 1.0, "ib_tbt"),
            (3, 103.0, 1.0, "ib_hist"),
            (5, 105.0, 1.0, "ib_hist"),
            (5, 105.0, 1.0, "ib_hist"),
        ]
        quotes = rows(store, 265598, TickType.BID_ASK)
        assert [(q["ts"], q["bid_price"], q["ask_size"], q["source"]) for q in quotes] == [
            ((T + 4) * NS_PER_SECOND, 99.0, 6.0, "ib_hist")
        ]
        by_type = {g.tick_type: g for g in gaps}
        assert (by_type["last"].backfilled_ticks, by_type["bid_ask"].backfilled_ticks) == (3, 1)
        requests = r.tws.requests_of("reqHistoricalTicks")
        assert {(q["whatToShow"], q["startDateTime"]) for q in requests} == {
            ("TRADES", "20250110 14:00:00 UTC"),
            ("BID_ASK", "20250110 14:00:00 UTC"),
        }
        assert r.source.status()["historical_requests"] == 2


async def test_a_pacing_violation_is_waited_out_and_retried(store: TickStore, clock: ManualClock) -> None:
    tws = FakeTWS([AAPL, ES])
    tws.add_historical_ticks(265598, "TRADES", [LastTick(T + 2, 50.0, 7)])
    contract = Contract(265598, "AAPL", tick_types=(TickType.LAST,))
    async with running(store, clock, [contract], tws=tws, pacing_retry_seconds=0.2) as r:
        await subscribed(r.tws, 265598, "reqTickByTickData", "Last")
        r.tws.pacing_violation(times=1)
        r.tws.drop_connections()
        await until(lambda: store.gaps.gaps(), "gap opened")
        clock.advance(5)
        await until(lambda: [g for g in store.gaps.gaps() if g.backfill == "done"], "gap backfilled", timeout=10)
        assert trade_shape(rows(store, 265598, TickType.LAST)) == [(2, 50.0, 7.0, "ib_hist")]
        status = r.source.status()
        assert status["pacing_violations"] == 1 and status["historical_requests"] == 2


async def test_refused_subscription_is_a_gap_until_data_flows(store: TickStore, clock: ManualClock) -> None:
    contract = Contract(495512563, "ES", sec_type="FUT", exchange="CME", calendar="CMES",
                        tick_types=(TickType.DEPTH,), depth_rows=5)  # fmt: skip
    tws = FakeTWS([AAPL, ES])
    tws.refuse("reqMktDepth", 354, times=1)
    async with running(store, clock, [contract], tws=tws) as r:
        gaps = await until(lambda: store.gaps.gaps(), "refused gap")
        assert (gaps[0].reason, gaps[0].tick_type, gaps[0].end_ns) == ("subscription_refused", "depth", None)
        assert "IB 354" in gaps[0].detail
        r.tws.connectivity_restored()  # 1102: everything is requested again, and this time IB serves depth
        await subscribed(r.tws, 495512563, "reqMktDepth", count=1)
        clock.advance(3)
        r.tws.emit_depth(495512563, 0, 0, 1, 5999.75, 4)
        await stored(store, 495512563, TickType.DEPTH, 1)
        gap = (await until(lambda: [g for g in store.gaps.gaps() if g.backfill != "pending"], "closed"))[0]
        assert gap.end_ns == T0_NS + 3 * NS_PER_SECOND and gap.backfill == "not_possible"


async def test_a_burst_ending_on_a_4096_byte_read_is_not_lost(store: TickStore, clock: ManualClock) -> None:
    # ibapi 9.81 alone drops the first tick: its recv returns exactly 4096 bytes, the next one times out.
    tws = FakeTWS([AAPL, ES], nudge=False)
    contract = Contract(265598, "AAPL", tick_types=(TickType.LAST,))
    async with running(store, clock, [contract], tws=tws) as r:
        await subscribed(r.tws, 265598, "reqTickByTickData", "Last")
        req_id = r.tws.subscriptions(265598, "reqTickByTickData", "Last")[0].req_id
        base = len(tick_by_tick(req_id, "Last", LastTick(T, 1.0, 1)))
        big = LastTick(T, 1.0, 1, special_conditions="x" * (4096 - base))
        assert len(tick_by_tick(req_id, "Last", big)) == 4096
        r.tws.emit_ticks(265598, "Last", [big])
        time.sleep(1.3)  # the reader's socket timeout is 1 s
        r.tws.emit_tick_by_tick(265598, "Last", time=T + 1, price=2.0, size=1)
        ticks = await stored(store, 265598, TickType.LAST, 2)
        assert [(t["price"], len(t["conditions"])) for t in ticks] == [(1.0, 4096 - base), (2.0, 0)]


async def test_ib_samples_replay_through_the_source_into_the_store(store: TickStore, clock: ManualClock) -> None:
    requires_shared_data("ib_mktdata")
    requires_shared_data("ib_depth_eurusd")
    tws = FakeTWS([AAPL, ES, ib_samples.EURUSD, ib_samples.HK_STOCK, ib_samples.HIST_CONTRACT])
    hk = Contract(900001, "HKSAMPLE", exchange="SEHK", currency="HKD", calendar="XHKG",
                  tick_types=(TickType.BID_ASK, TickType.LAST))  # fmt: skip
    eurusd = Contract(12087792, "EUR", sec_type="CASH", exchange="IDEALPRO", calendar="XNYS",
                      tick_types=(TickType.DEPTH,), depth_rows=5)  # fmt: skip
    hist = Contract(900002, "HISTSAMPLE", tick_types=(TickType.BID_ASK, TickType.LAST))
    tws.add_historical_ticks(900002, "BID_ASK", ib_samples.hist_bid_ask_ticks())
    tws.add_historical_ticks(900002, "TRADES", ib_samples.hist_trade_ticks())
    async with running(store, clock, [hk, eurusd, hist], tws=tws, max_tick_by_tick_subscriptions=0) as r:
        await subscribed(r.tws, 900001, "reqMktData")
        await subscribed(r.tws, 12087792, "reqMktDepth")
        # reqMktData ticks (an HKEX stock): bid/ask and trades from tickPrice/tickSize.
        with gzip.open(requires_shared_data("ib_mktdata") / "hk_stock_mktdata_ticks_20220107.json.gz") as f:
            hk_rows = json.load(f)
        r.tws.emit_mkt_data_ticks(900001, ib_samples.hk_mktdata_ticks())
        # EUR.USD depth: 271 updateMktDepth rows.
        assert r.tws.emit_depth_updates(12087792, ib_samples.eurusd_depth_updates()) == 271
        depth = await stored(store, 12087792, TickType.DEPTH, 271)
        book = OrderBook()
        for tick in depth:
            book.apply(tick)
        final = {(0 if side == "ask" else 1, pos): (row[0], int(row[1]))
                 for side in ("ask", "bid") for pos, row in enumerate(book.rows(side)) if row is not None}  # fmt: skip
        assert final == ib_samples.eurusd_final_book()
        # The trades add up to IB's own VOLUME ticks from the first LAST price on.
        first_last = next(i for i, row in enumerate(hk_rows) if row["tickType"] == 4)
        volumes = [row["size"] for row in hk_rows if row["tickType"] == 8]
        before = [row["size"] for row in hk_rows[:first_last] if row["tickType"] == 8][-1]
        await until(lambda: sum(t["size"] for t in rows(store, 900001, TickType.LAST)) >= volumes[-1] - before,
                    "hk trades", timeout=15)  # fmt: skip
        assert sum(t["size"] for t in rows(store, 900001, TickType.LAST)) == volumes[-1] - before
        quotes = rows(store, 900001, TickType.BID_ASK)
        assert quotes and all(q["bid_price"] < q["ask_price"] for q in quotes)
        # Historical BID_ASK and TRADES samples, through a backfill of their whole span.
        backfiller = Backfiller(store, r.source.fetch_history)
        bid_ask = ib_samples.hist_bid_ask_ticks()
        start, end = bid_ask[0].time * NS_PER_SECOND, (bid_ask[-1].time + 1) * NS_PER_SECOND
        result = await backfiller.fill(hist, TickType.BID_ASK, start, end)
        assert result.received == result.stored == len(bid_ask) == 1003
        got = [(q["ts"], q["bid_price"], q["ask_price"], q["bid_size"], q["ask_size"])
               for q in rows(store, 900002, TickType.BID_ASK)]  # fmt: skip
        assert sorted(got) == sorted((t.time * NS_PER_SECOND, t.bid, t.ask, t.bid_size, t.ask_size) for t in bid_ask)
        trades = ib_samples.hist_trade_ticks()
        start, end = trades[0].time * NS_PER_SECOND, (trades[-1].time + 1) * NS_PER_SECOND
        assert (await backfiller.fill(hist, TickType.LAST, start, end)).stored == len(trades) == 6
        assert [(t["ts"], t["price"], t["size"]) for t in rows(store, 900002, TickType.LAST)] == [
            (t.time * NS_PER_SECOND, t.price, t.size) for t in trades
        ]
