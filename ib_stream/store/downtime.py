"""Service downtime as gaps: at start-up, the time since the previous run stopped (or crashed) is recorded
for every configured stream, clipped to the contract's open trading (a weekend restart is no gap).

    previous = ledger.begin_run(now_ns, source="ib")
    record_downtime(ledger, previous, now_ns, contracts, last_ticks=last_tick_times(store, contracts),
                    open_ended=True)

A crash is dated from the last heartbeat, or from the stream's newest stored tick where that is
earlier: ticks received but not yet durable, or still in flight from the broker, are younger than
it, so they fall inside the gap (DESIGN §5, invariant 9). A clean stop needs no such care: the IB
source opens its own gap at each stream's last tick when it stops.

`open_ended`: the source that starts now closes the gap itself, per stream, when its data flows
again (the IB source) — the last interval, the one reaching the start-up, is then recorded open,
since a service that has started has not yet subscribed anything.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from ib_stream.calendars import MarketSessions
from ib_stream.domain import Contract, StreamKey
from ib_stream.store.gaps import BackfillState, GapLedger, GapReason, ServiceRun
from ib_stream.store.tickstore import TickStore
from ib_stream.times import iso_us

log = logging.getLogger(__name__)
SESSION_TYPE = "extended"  # the sessions a recorder is expected to cover (the watchdog uses the same)


def open_intervals(contract: Contract, start_ns: int, end_ns: int) -> list[tuple[int, int]]:
    """The parts of [start_ns, end_ns) in which the contract's market trades (extended session, breaks removed)."""
    try:
        sessions = MarketSessions.for_contract(contract).between(start_ns, end_ns, SESSION_TYPE)
    except Exception:  # an unknown calendar: count the whole interval
        log.exception("no sessions for %s (calendar %s): the whole downtime counts", contract.symbol, contract.calendar)
        return [(start_ns, end_ns)] if start_ns < end_ns else []
    out: list[tuple[int, int]] = []
    for session in sessions:
        cuts = [session.start_ns, *(t for brk in session.breaks for t in brk), session.end_ns]
        for lo, hi in zip(cuts[::2], cuts[1::2], strict=True):
            lo, hi = max(lo, start_ns), min(hi, end_ns)
            if lo < hi:
                out.append((lo, hi))
    return out


def last_tick_ns(store: TickStore, stream: StreamKey) -> int | None:
    """Event time of the newest tick the store holds for `stream` (hot tier or catalog), None when it holds none."""
    newest: int | None = None
    hot = store.buffer.hot(stream)
    if hot is not None:
        for chunk in hot.snapshot().chunks:
            if chunk.table.num_rows and (newest is None or chunk.max_ts > newest):
                newest = chunk.max_ts
    for file in store.index.files(stream):
        if newest is None or file.end_time > newest:
            newest = file.end_time
    return newest


def last_tick_times(store: TickStore, contracts: Sequence[Contract]) -> dict[StreamKey, int]:
    """`last_tick_ns` of every configured stream that has ticks (blocking: run it off the event loop)."""
    out = {}
    for contract in contracts:
        for tick_type in contract.tick_types:
            stream = StreamKey(contract.con_id, tick_type)
            if (newest := last_tick_ns(store, stream)) is not None:
                out[stream] = newest
    return out


def record_downtime(
    ledger: GapLedger,
    previous: ServiceRun | None,
    now_ns: int,
    contracts: Sequence[Contract],
    backfill: BackfillState = BackfillState.PENDING,
    *,
    last_ticks: Mapping[StreamKey, int] | None = None,
    open_ended: bool = False,
) -> int:
    """Record the downtime since `previous` as gaps on every configured stream; return how many were recorded.

    `last_ticks`: the newest stored tick per stream (a crash gap starts there where that is before the last
    heartbeat); `open_ended`: leave the interval reaching `now_ns` open for the starting source to close.
    """
    if previous is None or previous.down_from_ns >= now_ns:
        return 0
    reason = GapReason.SERVICE_CRASH if previous.crashed else GapReason.SERVICE_DOWN
    how = "crashed (no clean stop; last alive" if previous.crashed else "was stopped (at"
    since = iso_us(previous.down_from_ns)
    count = 0
    for contract in contracts:
        intervals: dict[int, list[tuple[int, int]]] = {}
        for tick_type in contract.tick_types:
            stream = StreamKey(contract.con_id, tick_type)
            down_from = previous.down_from_ns
            detail = f"service {how} {since})"
            if previous.crashed and last_ticks is not None and last_ticks.get(stream, down_from) < down_from:
                down_from = last_ticks[stream]
                detail = f"service {how} {since}; last tick stored {iso_us(down_from)})"
            if down_from not in intervals:
                intervals[down_from] = open_intervals(contract, down_from, now_ns)
            for lo, hi in intervals[down_from]:
                if open_ended and hi == now_ns:
                    until = f"{detail} until its data flowed again after the start of run {previous.id + 1}"
                    count += len(ledger.open_each({stream: lo}, reason, until))
                else:
                    ledger.add(
                        stream, lo, hi, reason, f"{detail} until it started again (run {previous.id + 1})", backfill
                    )
                    count += 1
    if count:
        log.warning("service %s: %d gap(s) recorded over the configured streams", reason.value.replace("_", " "), count)
    return count
