"""The gap ledger: gaps per stream with reasons and backfill state, service runs, downtime clipped to sessions."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from ib_stream.clock import NS_PER_SECOND, ManualClock, to_ns
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.settings import StorageConfig
from ib_stream.storage import TickStore
from ib_stream.store.downtime import last_tick_times, open_intervals, record_downtime
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


def test_gaps_open_and_close_per_stream_at_their_own_instants(tmp_path: Path) -> None:
    gaps = ledger(tmp_path)
    ids = gaps.open_each({QUOTES: T0_NS, TRADES: T0_NS - 3 * NS_PER_SECOND}, GapReason.DISCONNECT, "closed")
    assert len(ids) == 2 and gaps.open_each({QUOTES: T0_NS + 1}, GapReason.STALE_FEED, "stale") == []
    closed = gaps.close_each({QUOTES: T0_NS + 5 * NS_PER_SECOND, TRADES: T0_NS - 9 * NS_PER_SECOND})
    assert [(g.stream, g.start_ns, g.end_ns) for g in closed] == [
        (TRADES, T0_NS - 3 * NS_PER_SECOND, T0_NS - 3 * NS_PER_SECOND),  # never before its start
        (QUOTES, T0_NS, T0_NS + 5 * NS_PER_SECOND),
    ]
    assert gaps.close_each({QUOTES: T0_NS + H}) == []  # nothing open any more


def test_a_crash_gap_starts_at_the_last_stored_tick_where_that_is_before_the_last_heartbeat(
    config: StorageConfig,
) -> None:
    # AAPL's XNAS extended session is open at T0 (Friday 09:00 New York). bid_ask's last stored tick (T0 + 10 s)
    # is before the last heartbeat (T0 + 30 s): ticks received after it may not have been durable.
    with TickStore(config) as store:
        store.gaps.begin_run(T0_NS, "ib")
        tick = {"ts": T0_NS + 10 * NS_PER_SECOND, "bid_price": 1.0, "bid_size": 1.0, "ask_price": 2.0, "ask_size": 1.0}
        store.append_batch_sync(QUOTES.contract_id, QUOTES.tick_type, [tick], source="ib_tbt")
        store.append_batch_sync(TRADES.contract_id, TRADES.tick_type, [{"ts": T0_NS + H, "price": 1.0, "size": 1.0}])
        store.gaps.heartbeat(T0_NS + 30 * NS_PER_SECOND)
        restart = T0_NS + 60 * NS_PER_SECOND
        previous = store.gaps.begin_run(restart, "ib")
        last = last_tick_times(store, [AAPL])
        assert last == {QUOTES: T0_NS + 10 * NS_PER_SECOND, TRADES: T0_NS + H}
        assert record_downtime(store.gaps, previous, restart, [AAPL], last_ticks=last) == 2
        by_stream = {g.stream: g for g in store.gaps.gaps()}
        assert (by_stream[QUOTES].start_ns, by_stream[QUOTES].end_ns) == (T0_NS + 10 * NS_PER_SECOND, restart)
        assert "last tick stored 2025-01-10T14:00:10.000000Z" in by_stream[QUOTES].detail
        assert (by_stream[TRADES].start_ns, by_stream[TRADES].end_ns) == (T0_NS + 30 * NS_PER_SECOND, restart)
        assert {g.reason for g in by_stream.values()} == {"service_crash"}


def test_a_clean_stop_is_dated_from_the_stop_and_an_open_ended_gap_waits_for_the_source(tmp_path: Path) -> None:
    gaps = ledger(tmp_path)
    gaps.begin_run(T0_NS, "ib")
    gaps.end_run(T0_NS + 30 * NS_PER_SECOND)
    restart = T0_NS + 60 * NS_PER_SECOND
    previous = gaps.begin_run(restart, "ib")
    last = {QUOTES: T0_NS + NS_PER_SECOND}  # the IB source opened its own gap there when it stopped
    assert record_downtime(gaps, previous, restart, [AAPL], last_ticks=last, open_ended=True) == 2
    rows = gaps.gaps()
    assert {(g.reason, g.start_ns, g.end_ns) for g in rows} == {("service_down", T0_NS + 30 * NS_PER_SECOND, None)}
    assert "until its data flowed again after the start of run 2" in rows[0].detail


def test_last_tick_times_reads_the_hot_tier_and_the_archive(config: StorageConfig, clock: ManualClock) -> None:
    with TickStore(config, clock) as store:
        assert last_tick_times(store, [AAPL]) == {}
        trades = [{"ts": T0_NS + i * NS_PER_SECOND, "price": 1.0, "size": 1.0} for i in (5, 1)]
        store.append_batch_sync(TRADES.contract_id, TRADES.tick_type, trades)
        assert last_tick_times(store, [AAPL]) == {TRADES: T0_NS + 5 * NS_PER_SECOND}
        clock.advance(16 * 60)
        store.run_archival()  # the segment is sealed: archived
        clock.advance(2 * 3600)
        store.run_archival()  # and evicted from the hot tier
        hot = store.buffer.hot(TRADES)
        assert hot is not None and sum(c.table.num_rows for c in hot.snapshot().chunks) == 0
        assert last_tick_times(store, [AAPL]) == {TRADES: T0_NS + 5 * NS_PER_SECOND}
