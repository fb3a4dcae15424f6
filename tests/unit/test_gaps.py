"""The gap ledger: gaps per stream with reasons and backfill state, service runs, downtime clipped to sessions."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from ib_stream.clock import NS_PER_SECOND, to_ns
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.settings import StorageConfig
from ib_stream.storage import TickStore
from ib_stream.store.downtime import open_intervals, record_downtime
from ib_stream.store.gaps import BackfillState, GapLedger, GapReason
from ib_stream.store.repair import rebuild
from tests.conftest import T0_NS

QUOTES = StreamKey(265598, TickType.BID_ASK)
TRADES = StreamKey(265598, TickType.LAST)
H = 3600 * NS_PER_SECOND
AAPL = Contract(265598, "AAPL", tick_types=(TickType.BID_ASK, TickType.LAST))


def ledger(tmp_path: Path) -> GapLedger:
    return GapLedger(tmp_path / "index.db")


def test_open_and_close_gaps_per_stream(tmp_path: Path) -> None:
    gaps = ledger(tmp_path)
    ids = gaps.open_gaps([QUOTES, TRADES], T0_NS, GapReason.DISCONNECT, "IB 1100: lost", code=1100)
    assert len(ids) == 2
    # A stream with an open gap does not get a second one.
    assert gaps.open_gaps([QUOTES], T0_NS + 5, GapReason.STALE_FEED, "stale") == []
    assert [g.end_ns for g in gaps.gaps(open_only=True)] == [None, None]
    closed = gaps.close_gaps([QUOTES], T0_NS + 10 * NS_PER_SECOND)
    assert [(g.tick_type, g.reason, g.code, g.end_ns) for g in closed] == [
        ("bid_ask", "disconnect", 1100, T0_NS + 10 * NS_PER_SECOND)
    ]
    assert [g.stream for g in gaps.gaps(open_only=True)] == [TRADES]
    assert gaps.close_gaps(None, T0_NS + H, reasons=[GapReason.SUBSCRIPTION_REFUSED]) == []  # other reason
    gaps.close_gaps(None, T0_NS + H)
    assert gaps.gaps(open_only=True) == []


def test_gaps_filter_by_range_and_backfill_state(tmp_path: Path) -> None:
    gaps = ledger(tmp_path)
    first = gaps.add(QUOTES, T0_NS, T0_NS + H, GapReason.SERVICE_DOWN, "down")
    second = gaps.add(QUOTES, T0_NS + 3 * H, T0_NS + 4 * H, GapReason.SERVICE_CRASH, "crash")
    assert [g.id for g in gaps.gaps(265598, T0_NS + H // 2, T0_NS + 2 * H)] == [first]
    assert [g.id for g in gaps.gaps(265598, T0_NS + H, T0_NS + 3 * H)] == []  # touching ends do not overlap
    assert gaps.gaps(999) == []
    gaps.set_backfill(first, BackfillState.DONE, 40, "ok")
    gaps.set_backfill(first, BackfillState.DONE, 2, "again")
    assert [g.id for g in gaps.gaps(backfill=[BackfillState.PENDING])] == [second]
    done = gaps.by_ids([first])[0]
    assert (done.backfill, done.backfilled_ticks, done.backfill_note) == ("done", 42, "again")


def test_service_runs_give_the_previous_run(tmp_path: Path) -> None:
    gaps = ledger(tmp_path)
    assert gaps.begin_run(T0_NS, "ib") is None
    gaps.heartbeat(T0_NS + 5 * NS_PER_SECOND)
    gaps.open_gaps([QUOTES], T0_NS + 6 * NS_PER_SECOND, GapReason.DISCONNECT, "closed")
    crashed = gaps.begin_run(T0_NS + H, "ib")  # no end_run: the first run crashed
    assert crashed is not None and crashed.crashed and crashed.down_from_ns == T0_NS + 5 * NS_PER_SECOND
    # The gap left open by the crashed run ends when it was last known alive.
    assert [g.end_ns for g in gaps.gaps()] == [T0_NS + 6 * NS_PER_SECOND]
    gaps.end_run(T0_NS + 2 * H)
    stopped = gaps.begin_run(T0_NS + 3 * H, "sim")
    assert stopped is not None and not stopped.crashed and stopped.down_from_ns == T0_NS + 2 * H
    assert [r.source for r in gaps.runs()] == ["ib", "ib", "sim"]


def test_downtime_is_clipped_to_open_sessions(tmp_path: Path) -> None:
    # Friday 2025-01-10 19:00 New York -> Monday 2025-01-13 05:00: XNAS extended hours end 20:00 Friday
    # and start 04:00 Monday, so only 19:00-20:00 Friday and 04:00-05:00 Monday are gaps.
    start, end = to_ns_utc("2025-01-11T00:00:00"), to_ns_utc("2025-01-13T10:00:00")
    assert open_intervals(AAPL, start, end) == [
        (start, to_ns_utc("2025-01-11T01:00:00")),
        (to_ns_utc("2025-01-13T09:00:00"), end),
    ]
    gaps = ledger(tmp_path)
    gaps.begin_run(start - H, "ib")
    gaps.end_run(start)
    previous = gaps.begin_run(end, "ib")
    assert record_downtime(gaps, previous, end, [AAPL]) == 4  # two intervals x two streams
    rows = gaps.gaps()
    assert {(g.reason, g.backfill) for g in rows} == {("service_down", "pending")}
    assert sorted({(g.start_ns, g.end_ns) for g in rows}) == open_intervals(AAPL, start, end)
    assert "was stopped (at 2025-01-11T00:00:00.000000Z)" in rows[0].detail


def test_downtime_over_a_weekend_only_is_no_gap(tmp_path: Path) -> None:
    gaps = ledger(tmp_path)
    gaps.begin_run(to_ns_utc("2025-01-11T02:00:00"), "ib")  # Saturday
    previous = gaps.begin_run(to_ns_utc("2025-01-12T20:00:00"), "ib")  # Sunday, crashed in between
    assert record_downtime(gaps, previous, to_ns_utc("2025-01-12T20:00:00"), [AAPL]) == 0


def test_index_rebuild_keeps_the_ledger(config: StorageConfig) -> None:
    with TickStore(config) as store:
        store.gaps.add(QUOTES, T0_NS, T0_NS + H, GapReason.SERVICE_CRASH, "crash")
    rebuild(config)
    with TickStore(config) as reopened:
        assert [g.reason for g in reopened.gaps.gaps()] == ["service_crash"]


def to_ns_utc(text: str) -> int:
    return to_ns(datetime.fromisoformat(text).replace(tzinfo=UTC))
