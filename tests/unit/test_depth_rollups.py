"""1-second OBI-from-depth rollups over a real store: bars served from them equal the book replay (price levels
and IB position rows, ranges starting inside hours, quiet hours, an emptied book), and late depth — inside a
rolled-up hour or before it — is never served stale."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from ib_stream.analytics.request import BarsRequest
from ib_stream.clock import NS_PER_SECOND, ManualClock
from ib_stream.domain import Contract
from ib_stream.orderflow.service import OrderFlow
from ib_stream.storage import TickStore
from ib_stream.store.depth_rollups import depth_obi_rows, update_depth_rollups
from ib_stream.store.rollups import update_rollups
from tests.conftest import CONTRACT, T0_NS
from tests.unit.test_book import level, random_levels, random_rows

S = NS_PER_SECOND
MINUTE = 60 * S
HOUR = 60 * MINUTE
AAPL = Contract(CONTRACT, "AAPL", calendar="XNAS", min_tick=0.01)


def depth_day(by_price: bool, seed: int) -> list[dict[str, Any]]:
    """Depth in the 14:00, 15:00 and 17:00 UTC hours (none in the 16:00 hour), the book emptied at 17:20."""
    rng = random.Random(seed)
    events = random_levels(rng, 6000) if by_price else random_rows(rng, 6000)
    times = sorted(rng.randrange(T0_NS, T0_NS + 3 * HOUR) for _ in events)
    times = [t + HOUR if t >= T0_NS + 2 * HOUR else t for t in times]  # the 16:00 hour stays quiet
    for event, ts in zip(events, times, strict=True):
        event["ts"] = ts
    if by_price:
        book: dict[tuple[str, float], bool] = {}
        for event in events:
            book[(event["side"], event["price"])] = event["operation"] != "delete" and event["size"] > 0
        cut = next(i for i, e in enumerate(events) if e["ts"] >= T0_NS + 3 * HOUR + 20 * MINUTE)
        at = events[cut]["ts"]
        deletes = [level(side, "delete", price, 0.0, at) for (side, price) in sorted(book)]
        events[cut:cut] = deletes  # every level deleted (some twice): no volume until the next insert
    return events


def trade_day() -> list[dict[str, Any]]:
    rng = np.random.default_rng(3)
    ts = np.sort(T0_NS + rng.integers(0, 4 * HOUR, 3000))
    return [
        {"ts": int(t), "price": 100 + int(rng.integers(-8, 8)) * 0.25, "size": 1.0 + i % 7} for i, t in enumerate(ts)
    ]


REQUESTS = [
    dict(start=T0_NS, end=T0_NS + 4 * HOUR, resolution="1m", kinds=("obi",)),
    dict(start=T0_NS + 17 * MINUTE + 5 * S, end=T0_NS + 3 * HOUR + 50 * MINUTE, resolution="5m", kinds=("obi",)),
    dict(start=T0_NS + 2 * HOUR + 10 * MINUTE, end=T0_NS + 3 * HOUR + 30 * MINUTE, resolution="1s", kinds=("obi",)),
    dict(start=T0_NS + 45 * MINUTE, end=T0_NS + 4 * HOUR, resolution="15m", kinds=("ohlc", "cvd", "obi")),
    dict(start=T0_NS + 3 * HOUR + 21 * MINUTE, end=T0_NS + 3 * HOUR + 40 * MINUTE, resolution="1m", kinds=("obi",)),
]


def assert_same(got: pa.Table, want: pa.Table, what: object = "") -> None:
    """Equal tables, NaN equal to NaN."""
    assert got.column_names == want.column_names
    for name in got.column_names:
        np.testing.assert_array_equal(
            got.column(name).to_numpy(zero_copy_only=False),
            want.column(name).to_numpy(zero_copy_only=False),
            err_msg=f"{name} of {what}",
        )


ALL = frozenset(range(len(REQUESTS)))
BEFORE_15 = frozenset({0, 1, 3})  # the requests that start in the 14:00 hour


def compare(store: TickStore, served_by_rollups: frozenset[int], *, obi_source: str = "auto") -> None:
    """Every request equals the book replay; those listed are served (partly) from stored depth rollups."""
    for i, spec in enumerate(REQUESTS):
        request = BarsRequest(
            CONTRACT, spec["start"], spec["end"], spec["resolution"], spec["kinds"], obi_source=obi_source
        )  # type: ignore[arg-type]
        replay = OrderFlow(store.engine, AAPL, use_rollups=False, use_cache=False).bars(request)
        rolled = OrderFlow(store.engine, AAPL, use_cache=False).bars(request)
        assert (rolled.obi_source, rolled.side_methods) == (replay.obi_source, replay.side_methods), spec
        assert_same(rolled.table, replay.table, spec)
        served = depth_obi_rows(store.engine, CONTRACT, spec["start"], spec["end"], 10)
        assert (served is not None) == (i in served_by_rollups), spec


@pytest.mark.parametrize("by_price", [True, False])
def test_depth_rollups_give_the_replay_answer_and_late_depth_is_never_served_stale(
    store: TickStore, clock: ManualClock, by_price: bool
) -> None:
    store.append_batch_sync(CONTRACT, "depth", depth_day(by_price, 11), source="test")
    store.append_batch_sync(CONTRACT, "last", trade_day(), source="test")
    clock.set(T0_NS + 6 * HOUR)
    store.run_archival()
    store.run_snapshots()
    assert update_rollups(store.engine) >= 4
    assert update_depth_rollups(store.engine) == 3  # 14:00, 15:00 and 17:00: the quiet 16:00 hour has none
    assert update_depth_rollups(store.engine) == 0  # idempotent
    for source in ("auto", "depth"):
        compare(store, ALL, obi_source=source)

    # A late depth tick inside the rolled-up 15:00 hour: bypassed while hot, then stale until rebuilt.
    late = level("bid", "insert", 99.5, 5000.0, T0_NS + HOUR + 30 * MINUTE) if by_price else None
    if late is None:
        late = {"ts": T0_NS + HOUR + 30 * MINUTE, "side": "bid", "position": 0, "operation": "insert",
                "price": 99.5, "size": 5000.0, "market_maker": "", "by_price": False}  # fmt: skip
    store.append_batch_sync(CONTRACT, "depth", [late], source="test")
    compare(store, BEFORE_15)  # 15:00 holds a hot tick; 17:00's opening book changed (the watermark rose)
    clock.set(T0_NS + 7 * HOUR)
    store.run_archival()
    compare(store, BEFORE_15)  # archived: 15:00's files changed, 17:00's watermark too: both stale
    store.run_snapshots()
    assert update_depth_rollups(store.engine) == 2  # 15:00 and 17:00 (14:00 is before the late tick)
    compare(store, ALL)


def test_without_depth_the_rollups_leave_the_choice_to_the_replay(store: TickStore, clock: ManualClock) -> None:
    """No depth in the range and no volume in force (the book was emptied): the replay decides the OBI source."""
    store.append_batch_sync(CONTRACT, "depth", [level("bid", "insert", 99.0, 3.0, T0_NS + 5 * S)], source="test")
    store.append_batch_sync(CONTRACT, "depth", [level("bid", "delete", 99.0, 0.0, T0_NS + 6 * S)], source="test")
    store.append_batch_sync(CONTRACT, "depth", [level("ask", "insert", 99.5, 1.0, T0_NS + 2 * HOUR)], source="test")
    clock.set(T0_NS + 4 * HOUR)
    store.run_archival()
    store.run_snapshots()
    assert update_depth_rollups(store.engine) == 2
    quiet = BarsRequest(CONTRACT, T0_NS + HOUR, T0_NS + 2 * HOUR, "1m", ("obi",))
    assert depth_obi_rows(store.engine, CONTRACT, quiet.start_ns, quiet.end_ns, 10) is None
    rolled = OrderFlow(store.engine, AAPL, use_cache=False).bars(quiet)
    replay = OrderFlow(store.engine, AAPL, use_rollups=False, use_cache=False).bars(quiet)
    assert rolled.obi_source == replay.obi_source == "quotes"
    assert_same(rolled.table, replay.table)
    across = BarsRequest(CONTRACT, T0_NS, T0_NS + 3 * HOUR, "1h", ("obi",))
    served = depth_obi_rows(store.engine, CONTRACT, across.start_ns, across.end_ns, 10)
    assert served is not None and int(served[0]["events"].sum()) == 3
    rolled = OrderFlow(store.engine, AAPL, use_cache=False).bars(across)
    replay = OrderFlow(store.engine, AAPL, use_rollups=False, use_cache=False).bars(across)
    assert rolled.obi_source == replay.obi_source == "depth"
    assert_same(rolled.table, replay.table)
