"""Backfill paging and de-duplication against a real store, and IB pacing.

`fetch` here answers like reqHistoricalTicks: up to `page` ticks from a whole second onwards, and
all ticks of the last second it reaches even past the page size (as IB does).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.sources.ib_backfill import Backfiller
from ib_stream.sources.ib_history import HistoryInterrupted
from ib_stream.sources.ib_pacing import Pacer
from ib_stream.storage import TickStore
from ib_stream.store.gaps import GapReason
from ib_stream.store.schema import table_to_records
from tests.conftest import T0_NS

T = T0_NS // NS_PER_SECOND
AAPL = Contract(265598, "AAPL", tick_types=(TickType.BID_ASK, TickType.LAST, TickType.DEPTH))
NO_ATTR = SimpleNamespace(bidPastLow=False, askPastHigh=False, pastLimit=False, unreported=False)


def hist_trade(second: int, price: float, size: int) -> Any:
    return SimpleNamespace(
        time=second, price=price, size=size, tickAttribLast=NO_ATTR, exchange="", specialConditions=""
    )


class History:
    """IB's reqHistoricalTicks for TRADES over a canned list (sorted by time)."""

    def __init__(self, ticks: list[Any], page: int = 1000) -> None:
        self.ticks = ticks
        self.page = page
        self.starts: list[int] = []

    async def __call__(self, contract: Contract, start_ns: int, what: str) -> list[Any]:
        assert what == "TRADES" and start_ns % NS_PER_SECOND == 0
        self.starts.append(start_ns // NS_PER_SECOND)
        after = [t for t in self.ticks if t.time >= start_ns // NS_PER_SECOND]
        out = after[: self.page]
        if out:  # the rest of the last second too
            out += [t for t in after[self.page :] if t.time == out[-1].time]
        return out


def stored(store: TickStore, tick_type: TickType = TickType.LAST) -> list[dict[str, Any]]:
    table = store.engine.read_stream(StreamKey(265598, tick_type), 0, 2**62)
    return table_to_records(table)


def shape(ticks: list[dict[str, Any]]) -> list[tuple[int, float, float]]:
    return sorted((t["ts"] // NS_PER_SECOND, t["price"], t["size"]) for t in ticks)


async def test_pages_through_a_span_and_stores_each_tick_once(store: TickStore) -> None:
    # 30 seconds, 3 trades per second (two identical ones each), paged 7 at a time: pages end inside seconds.
    ticks = [hist_trade(T + s, 100 + s, k if k else 1) for s in range(30) for k in (0, 0, 2)]
    history = History(ticks, page=7)
    result = await Backfiller(store, history, page_size=7).fill(AAPL, TickType.LAST, T0_NS, T0_NS + 30 * NS_PER_SECOND)
    expected = shape([{"ts": t.time * NS_PER_SECOND, "price": t.price, "size": t.size} for t in ticks])
    assert shape(stored(store)) == expected
    assert (result.received, result.stored, result.duplicates) == (90, 90, 0)
    assert result.requests == len(history.starts) and history.starts[0] == T
    assert all(b > a for a, b in zip(history.starts, history.starts[1:], strict=False))
    assert {t["source"] for t in stored(store)} == {"ib_hist"}


async def test_ticks_already_held_are_not_stored_again(store: TickStore) -> None:
    # Live ticks before and after the gap, and inside its edge seconds.
    live = [
        {"ts": (T + 0) * NS_PER_SECOND, "price": 100.0, "size": 1.0},
        {"ts": (T + 1) * NS_PER_SECOND, "price": 101.0, "size": 1.0},
        {"ts": (T + 9) * NS_PER_SECOND, "price": 109.0, "size": 1.0},
    ]
    store.append_batch_sync(265598, TickType.LAST, live, source="ib_tbt")
    ticks = [hist_trade(T + s, 100 + s, 1) for s in range(10)] + [hist_trade(T + 1, 101.0, 1)]  # a second 101
    ticks.sort(key=lambda t: t.time)
    result = await Backfiller(store, History(ticks)).fill(AAPL, TickType.LAST, T0_NS, T0_NS + 10 * NS_PER_SECOND)
    assert (result.received, result.duplicates, result.stored) == (11, 3, 8)
    held = shape(stored(store))
    assert held == shape([{"ts": t.time * NS_PER_SECOND, "price": t.price, "size": t.size} for t in ticks])
    # Running it again stores nothing.
    again = await Backfiller(store, History(ticks)).fill(AAPL, TickType.LAST, T0_NS, T0_NS + 10 * NS_PER_SECOND)
    assert again.stored == 0 and shape(stored(store)) == held


async def test_span_ends_are_respected(store: TickStore) -> None:
    ticks = [hist_trade(T + s, 100 + s, 1) for s in range(20)]
    await Backfiller(store, History(ticks, page=4), page_size=4).fill(
        AAPL, TickType.LAST, T0_NS + 5 * NS_PER_SECOND, T0_NS + 12 * NS_PER_SECOND
    )
    assert [t["ts"] // NS_PER_SECOND - T for t in stored(store)] == list(range(5, 12))


async def test_fill_gap_records_the_outcome(store: TickStore) -> None:
    quotes, depth = StreamKey(265598, TickType.LAST), StreamKey(265598, TickType.DEPTH)
    end = T0_NS + 5 * NS_PER_SECOND
    ids = [store.gaps.add(s, T0_NS, end, GapReason.DISCONNECT, "closed") for s in (quotes, depth)]
    backfiller = Backfiller(store, History([hist_trade(T + 1, 10.0, 2)]), max_seconds=3)
    await backfiller.fill_gap(store.gaps.by_ids([ids[0]])[0], AAPL)
    assert await backfiller.fill_gap(store.gaps.by_ids([ids[1]])[0], AAPL) is None
    trades_gap, depth_gap = store.gaps.by_ids(ids)
    assert (trades_gap.backfill, trades_gap.backfilled_ticks) == ("partial", 1)
    assert "ib.backfill_max_seconds" in trades_gap.backfill_note
    assert (depth_gap.backfill, depth_gap.backfill_note) == ("not_possible", "IB has no history for depth")


async def test_a_failed_fetch_marks_the_gap_failed(store: TickStore) -> None:
    async def broken(contract: Contract, start_ns: int, what: str) -> list[Any]:
        raise RuntimeError("HMDS down")

    gap_id = store.gaps.add(StreamKey(265598, TickType.LAST), T0_NS, T0_NS + NS_PER_SECOND, GapReason.DISCONNECT, "x")
    with pytest.raises(RuntimeError):
        await Backfiller(store, broken).fill_gap(store.gaps.by_ids([gap_id])[0], AAPL)
    gap = store.gaps.by_ids([gap_id])[0]
    assert (gap.backfill, gap.backfill_note) == ("failed", "HMDS down")


async def test_a_fetch_cut_off_by_a_disconnect_leaves_the_gap_pending(store: TickStore) -> None:
    async def disconnected(contract: Contract, start_ns: int, what: str) -> list[Any]:
        raise HistoryInterrupted("the IB connection closed")

    gap_id = store.gaps.add(StreamKey(265598, TickType.LAST), T0_NS, T0_NS + NS_PER_SECOND, GapReason.DISCONNECT, "x")
    with pytest.raises(HistoryInterrupted):
        await Backfiller(store, disconnected).fill_gap(store.gaps.by_ids([gap_id])[0], AAPL)
    gap = store.gaps.by_ids([gap_id])[0]
    assert gap.backfill == "pending"  # the next connection backfills it again
    assert gap.backfill_note == "interrupted (the IB connection closed): backfilled again on the next connection"


def test_pacer_delays_only_past_the_limit() -> None:
    now = [0.0]
    pacer = Pacer(3, 10.0, monotonic=lambda: now[0])
    for _ in range(3):
        assert pacer.delay() == 0
        pacer.note()
    assert pacer.delay() == 10.0
    now[0] = 4.0
    assert pacer.delay() == 6.0
    now[0] = 10.0  # the first one left the window
    assert pacer.delay() == 0
    with pytest.raises(ValueError, match="limit >= 1"):
        Pacer(0, 1)


async def test_pacer_acquire_waits_for_a_slot() -> None:
    pacer = Pacer(2, 0.2)
    loop = asyncio.get_running_loop()
    start = loop.time()
    waits = [await pacer.acquire() for _ in range(5)]
    # Slots 1-2 at once; 3 waits a window (and 4 shares its window); 5 waits another.
    assert waits[:2] == [0.0, 0.0] and waits[2] > 0 and waits[4] > 0
    assert loop.time() - start >= 0.4 - 0.01
