"""Every tick once, or in the gap ledger: the IB source (real ibapi client -> fake TWS) at the edges of a gap.

Each test judges the store with the coverage oracle (`tests.support.coverage_scenario.check_coverage`)
against the scripted market's own log of what the broker traded: for every second between a stream's
first and last tick, its ticks are stored exactly once, or the second is inside a recorded gap.
"""

from __future__ import annotations

from typing import Any

import pytest

from ib_stream.clock import NS_PER_SECOND, ManualClock
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.storage import TickStore
from ib_stream.store.gaps import Gap
from tests.conftest import T0_NS
from tests.integration.test_ib_source import rows, running, stored, subscribed, until
from tests.support.coverage_scenario import Coverage, Scenario, check_coverage, run_scenario, stored_rows
from tests.support.fake_tws import AAPL, ES, FakeTWS
from tests.support.fake_tws_scenarios import ScriptedMarket

pytestmark = pytest.mark.timeout(30)
T = T0_NS // NS_PER_SECOND
S = NS_PER_SECOND
MID = StreamKey(265598, TickType.MID_POINT)
MIDPOINTS = Contract(265598, "AAPL", tick_types=(TickType.MID_POINT,))
KINDS = {TickType.BID_ASK: "BidAsk", TickType.LAST: "Last", TickType.MID_POINT: "MidPoint"}


def market_on(clock: ManualClock, contract: Contract) -> tuple[FakeTWS, ScriptedMarket]:
    tws = FakeTWS([AAPL, ES], clock=lambda: clock.now_ns() / S)
    streams = [(contract.con_id, KINDS[t]) for t in contract.tick_types]
    return tws, ScriptedMarket(tws, streams, lambda: clock.now_ns() / S, seed=3)


def judge(store: TickStore, market: ScriptedMarket) -> Coverage:
    broker = {StreamKey(c, TickType(_type(k))): ticks for (c, k), ticks in market.ticks.items()}
    return check_coverage(broker, stored_rows(store, broker), store.gaps.gaps())


def _type(kind: str) -> str:
    return {"BidAsk": "bid_ask", "Last": "last", "AllLast": "all_last", "MidPoint": "mid_point"}[kind]


def settled(store: TickStore, count: int) -> list[Gap] | None:
    """The ledger's gaps once there are `count`, all closed and backfilled (not pending)."""
    gaps = store.gaps.gaps()
    done = len(gaps) == count and all(g.end_ns is not None and g.backfill != "pending" for g in gaps)
    return gaps if done else None


async def test_a_disconnect_late_in_a_second_keeps_the_rest_of_that_second_in_the_gap(
    store: TickStore, clock: ManualClock
) -> None:
    # The socket closes 0.9 s into second T; ibapi notices up to 0.2 s later, in second T+1. The two ticks the
    # broker made in second T after the close never arrive: the gap must start no later than the last tick
    # received (T), not at detection (T+1.2), so they are backfilled (defect: they were neither).
    clock.set(T0_NS + 9 * S // 10)
    tws, market = market_on(clock, MIDPOINTS)
    async with running(store, clock, [MIDPOINTS], tws=tws) as r:
        await subscribed(r.tws, 265598, "reqTickByTickData", "MidPoint")
        market.trade(265598, "MidPoint")
        await stored(store, 265598, TickType.MID_POINT, 1)
        r.tws.drop_connections()
        market.trade(265598, "MidPoint")  # in second T, after the close: sent to nobody
        market.trade(265598, "MidPoint")
        clock.advance(0.3)  # before the event loop sees the close: detection falls in second T+1
        await subscribed(r.tws, 265598, "reqTickByTickData", "MidPoint", count=2)
        (gap,) = await until(lambda: [g for g in store.gaps.gaps() if g.end_ns is not None], "gap closed")
        assert gap.start_ns <= T0_NS  # no later than the last tick received
        clock.advance(1)  # the gap's last second is over: it may be backfilled
        await until(lambda: settled(store, 1), "gap backfilled")
        coverage = judge(store, market)
        assert coverage.violations == [] and (coverage.ticks, coverage.losses, coverage.duplicates) == (3, 0, 0)
        assert sorted(t["source"] for t in rows(store, 265598, TickType.MID_POINT)) == ["ib_hist", "ib_hist", "ib_tbt"]


@pytest.mark.parametrize("order", ["after", "before"])
async def test_a_live_tick_that_comes_with_the_backfill_is_stored_once(
    store: TickStore, clock: ManualClock, order: str
) -> None:
    # The reconnect lands in second T+10; the broker's tick X of that second is both in IB's history answer and
    # sent live — 0.2 s after the answer ("after": the backfill has stored it by then), or in the same write just
    # before it. Either way X is stored once (defect: a read-then-append backfill stored it twice).
    tws, market = market_on(clock, MIDPOINTS)
    async with running(store, clock, [MIDPOINTS], tws=tws) as r:
        await subscribed(r.tws, 265598, "reqTickByTickData", "MidPoint")
        market.trade(265598, "MidPoint")
        await stored(store, 265598, TickType.MID_POINT, 1)
        r.tws.drop_connections()
        await until(lambda: store.gaps.gaps(), "gap opened")
        clock.advance(10.5)
        market.piggyback(
            "before" if order == "before" else "after", delay=0.2 if order == "after" else 0, second=T + 10
        )
        await subscribed(r.tws, 265598, "reqTickByTickData", "MidPoint", count=2)
        await until(lambda: [g for g in store.gaps.gaps() if g.end_ns is not None], "gap closed")
        clock.advance(1)
        await until(lambda: settled(store, 1), "gap backfilled")
        await until(lambda: len(r.tws.sent) == 2, "the live copy sent")

        def live_x() -> int:
            held = rows(store, 265598, TickType.MID_POINT)
            return sum(1 for t in held if t["ts"] == (T + 10) * S and t["source"] == "ib_tbt")

        await until(
            lambda: r.source.status().get("live_duplicates_dropped", 0) + live_x() == 1, "the live copy handled"
        )
        coverage = judge(store, market)
        assert coverage.violations == [] and (coverage.ticks, coverage.losses, coverage.duplicates) == (2, 0, 0)


async def test_paced_subscriptions_keep_each_gap_open_until_tws_has_them(tmp_path: Any) -> None:
    # 2 messages a second for 2 contracts x 2 streams: the last subscription reaches TWS ~2.5 s after the first is
    # queued. The market trades all along; each stream's gap ends when TWS acknowledges its own subscription or
    # its data flows (defect: every gap ended when the requests were queued, and the ticks in between were lost).
    scenario = Scenario(seed=11, kind="drop", at_fraction=0.5, contracts=2, kinds=("BidAsk", "MidPoint"),
                        messages_per_second=2, backfill_delay=0.2, before_seconds=0.5, after_seconds=0.5)  # fmt: skip
    outcome = await run_scenario(scenario, tmp_path / "storage")
    coverage = outcome.coverage
    assert coverage.violations == [], coverage.violations[:5]
    assert coverage.losses == 0 and coverage.duplicates == 0, coverage.summary()
    assert coverage.ticks > coverage.sent_live  # ticks were made while nobody was subscribed
    assert len({g.end_ns for g in outcome.gaps}) > 1  # each stream's gap ended on its own
