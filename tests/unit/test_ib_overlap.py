"""The overlap of a backfill with live ticks: serialised per stream, late live copies dropped, counts kept."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.sources.ib_backfill import Backfiller
from ib_stream.sources.ib_overlap import GUARD_SECONDS, OverlapGate
from ib_stream.storage import TickStore
from ib_stream.store.schema import table_to_records
from tests.conftest import T0_NS

T = T0_NS // NS_PER_SECOND
MID = StreamKey(265598, TickType.MID_POINT)
AAPL = Contract(265598, "AAPL", tick_types=(TickType.MID_POINT,))


def mid(second: int, value: float) -> dict[str, Any]:
    return {"ts": second * NS_PER_SECOND, "mid_point": value, "source": "ib_tbt"}


def test_late_live_copies_of_backfilled_ticks_are_dropped_once_each() -> None:
    gate = OverlapGate()
    gate.live(MID, [mid(T, 1.0)])
    # The backfill stored, for second T+10, the value 2.0 twice and 3.0 once.
    gate.backfilled(MID, [mid(T + 10, 2.0), mid(T + 10, 2.0), mid(T + 10, 3.0)], (T + 10) * NS_PER_SECOND + 1)
    assert gate.remembered(MID) == 3
    # Live: one 2.0 (a copy), one 4.0 (new), then the second 2.0 and a third one (new: the broker had two).
    assert gate.live(MID, [mid(T + 10, 2.0), mid(T + 10, 4.0)]) == [mid(T + 10, 4.0)]
    assert gate.live(MID, [mid(T + 10, 2.0), mid(T + 10, 2.0)]) == [mid(T + 10, 2.0)]
    assert gate.dropped == 2 and gate.remembered(MID) == 1
    # A live tick of a later second: nothing of T+10 can come live any more.
    assert gate.live(MID, [mid(T + 11, 3.0)]) == [mid(T + 11, 3.0)]
    assert gate.remembered(MID) == 0


def test_only_the_spans_last_seconds_above_the_live_data_are_remembered() -> None:
    gate = OverlapGate()
    end = (T + 100) * NS_PER_SECOND
    span = [mid(T + s, 1.0) for s in range(0, 100)]
    gate.backfilled(MID, span, end)
    assert gate.remembered(MID) == GUARD_SECONDS  # seconds T+95 .. T+99
    gate.live(MID, [mid(T + 98, 5.0)])
    assert gate.remembered(MID) == 2  # T+98 and T+99: live data may still reach them
    gate.backfilled(MID, [mid(T + 97, 1.0)], end)  # below the newest live tick: never repeated live
    assert gate.remembered(MID) == 2
    depth = StreamKey(265598, TickType.DEPTH)
    gate.backfilled(depth, [{"ts": end - 1}], end)  # no history, nothing to remember
    assert gate.remembered(depth) == 0


async def test_a_backfill_and_live_ticks_of_its_last_second_store_each_tick_once(store: TickStore) -> None:
    # IB's history of the gap: 1.0 at T (received live before it), 2.0 twice and 3.0 at T+5, the second in which
    # data flowed again. Live copies of T+5 arrive while the backfill runs: a 2.0 before it reads what is held,
    # then 3.0 and the other 2.0 while it holds the stream's lock. Every tick is stored once.
    gate = OverlapGate()
    store.append_batch_sync(265598, TickType.MID_POINT, [mid(T, 1.0)], source="ib_tbt")
    history = [SimpleNamespace(time=T, price=1.0)] + [SimpleNamespace(time=T + 5, price=p) for p in (2.0, 2.0, 3.0)]
    answered = asyncio.Event()

    async def fetch(contract: Contract, start_ns: int, what: str) -> list[Any]:
        answered.set()
        await asyncio.sleep(0.05)
        return history

    async def live(ticks: list[dict[str, Any]]) -> None:
        async with gate.lock(MID):
            fresh = gate.live(MID, ticks)
            if fresh:
                await store.append_batch(265598, TickType.MID_POINT, fresh, "ib_tbt")

    backfill = asyncio.create_task(
        Backfiller(store, fetch, gate=gate).fill(AAPL, TickType.MID_POINT, T0_NS, (T + 5) * NS_PER_SECOND + 1)
    )
    await answered.wait()
    await live([mid(T + 5, 2.0)])  # stored before the backfill reads
    while not gate.lock(MID).locked():  # the backfill reads and appends
        await asyncio.sleep(0)
    late = asyncio.create_task(live([mid(T + 5, 3.0), mid(T + 5, 2.0)]))  # waits for the backfill's lock
    result = await backfill
    await late
    held = table_to_records(store.engine.read_stream(MID, 0, 2**62))
    assert sorted((t["ts"] // NS_PER_SECOND - T, t["mid_point"]) for t in held) == [
        (0, 1.0),
        (5, 2.0),
        (5, 2.0),
        (5, 3.0),
    ]
    assert (result.received, result.stored, result.duplicates) == (4, 2, 2)
    assert gate.dropped == 2
