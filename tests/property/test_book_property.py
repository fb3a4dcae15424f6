"""Property: the book at any instant T rebuilt from a snapshot plus deltas equals a full replay from the first tick.

Generated depth streams (IB position rows or price levels) span several hours; part of each stream
is archived to Parquet and part stays in the hot tier; snapshots are written; optionally late ticks
land in old hours afterwards (making later snapshots stale) and the writer runs again or not.
The expected book is an independent plain-Python replay of every generated tick with ts <= T.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ib_stream.analytics.book import OrderBook
from ib_stream.clock import ManualClock
from ib_stream.settings import StorageConfig
from ib_stream.storage import TickStore
from ib_stream.store.layout import HOUR_NS
from ib_stream.store.snapshots import SnapshotWriter, book_at
from tests.conftest import T0_NS

CONTRACT = 42
BASE = T0_NS - 8 * HOUR_NS  # 06:00 UTC; the clock stays at T0 (14:00), so every data hour is closed
SPAN_S = 5 * 3600
_counter = iter(range(10**9))

# (offset in seconds, side, operation, position or price index, size)
events_st = st.lists(
    st.tuples(
        st.integers(0, SPAN_S - 1),
        st.sampled_from(("bid", "ask")),
        st.sampled_from(("insert", "update", "update", "delete")),
        st.integers(0, 6),
        st.sampled_from((0.0, 100.0, 200.0, 300.0, 1500.0)),
    ),
    min_size=1,
    max_size=120,
)


def to_tick(event: tuple[int, str, str, int, float], by_price: bool) -> dict[str, Any]:
    offset, side, op, index, size = event
    price = 100.0 - index * 0.25 if side == "bid" else 100.25 + index * 0.25
    return {"ts": BASE + offset * 10**9, "side": side, "position": 0 if by_price else index, "operation": op,
            "price": price, "size": size, "market_maker": "", "by_price": by_price}  # fmt: skip


def expected_book(ticks: list[dict[str, Any]], by_price: bool) -> tuple[Any, Any]:
    """Plain replay in stored order: (ts, then arrival); price levels as sorted lists, rows as IB lists."""
    if by_price:
        state: dict[tuple[str, float], float] = {}
        for t in ticks:
            state[(t["side"], t["price"])] = 0.0 if t["operation"] == "delete" else t["size"]
        bids = sorted(((p, s) for (side, p), s in state.items() if side == "bid" and s > 0), reverse=True)
        return bids, sorted((p, s) for (side, p), s in state.items() if side == "ask" and s > 0)
    rows: dict[str, list[tuple[float, float] | None]] = {"bid": [], "ask": []}
    for t in ticks:
        side, pos = rows[t["side"]], t["position"]
        if t["operation"] == "delete":
            if pos < len(side):
                side.pop(pos)
            continue
        while len(side) < pos:
            side.append(None)
        if t["operation"] == "insert" or pos == len(side):
            side.insert(pos, (t["price"], t["size"]))
        else:
            side[pos] = (t["price"], t["size"])
    return rows["bid"], rows["ask"]


def observed(book: OrderBook, by_price: bool) -> tuple[Any, Any]:
    if by_price or book.by_price is None:
        return book.levels() if book.by_price is not None else ([], [])
    return tuple([None if r is None else (r[0], r[1]) for r in book.rows(side)] for side in ("bid", "ask"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    by_price=st.booleans(),
    events=events_st,
    archived_share=st.floats(0, 1),
    late=st.lists(st.integers(0, SPAN_S - 1), max_size=3),
    rewrite_after_late=st.booleans(),
    instants=st.lists(st.integers(-600, SPAN_S + 3600), min_size=1, max_size=6),
)
def test_book_at_equals_a_full_replay(
    tmp_path_factory: pytest.TempPathFactory,
    by_price: bool,
    events: list[tuple[int, str, str, int, float]],
    archived_share: float,
    late: list[int],
    rewrite_after_late: bool,
    instants: list[int],
) -> None:
    ticks = [to_tick(e, by_price) for e in sorted(events, key=lambda e: e[0])]
    late_ticks = [to_tick((offset, "bid", "insert", 0, 700.0), by_price) for offset in late]
    root: Path = tmp_path_factory.mktemp(f"book{next(_counter)}")
    clock = ManualClock(T0_NS)
    config = StorageConfig(
        data_root=root, fsync_interval_ms=1, compaction_delay_seconds=0, retired_file_grace_seconds=0
    )
    store = TickStore(config, clock).open()
    try:
        cut = int(len(ticks) * archived_share)
        if cut:
            store.append_batch_sync(CONTRACT, "depth", ticks[:cut], source="test")
            clock.advance(16 * 60)
            store.run_archival()  # the first part goes to Parquet, the rest stays in the hot tier
        if cut < len(ticks):
            store.append_batch_sync(CONTRACT, "depth", ticks[cut:], source="test")
        writer = SnapshotWriter.for_engine(store.engine)
        writer.update()
        stored = list(ticks)
        if late_ticks:
            store.append_batch_sync(CONTRACT, "depth", late_ticks, source="test")
            stored += late_ticks
            if rewrite_after_late:
                writer.update()
        fresh = not late_ticks or rewrite_after_late
        order = sorted(range(len(stored)), key=lambda i: (stored[i]["ts"], i))  # (ts, seq): seq = arrival order
        stored = [stored[i] for i in order]
        for offset in instants:
            at = BASE + offset * 10**9
            result = book_at(store.engine, CONTRACT, at)
            upto = [t for t in stored if t["ts"] <= at]
            assert observed(result.book, by_price) == expected_book(upto, by_price), f"at {offset}s"
            hour_start = at - at % HOUR_NS
            if fresh:  # valid snapshots: only the ticks of T's own hour are replayed
                assert result.deltas_replayed == sum(1 for t in upto if t["ts"] >= hour_start)
                assert (result.snapshot is None) == all(t["ts"] >= hour_start for t in upto)
    finally:
        store.close()
