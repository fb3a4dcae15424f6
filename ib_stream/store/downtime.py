"""Service downtime as gaps: at start-up, the time since the previous run stopped (or crashed) is recorded
for every configured stream, clipped to the contract's open trading (a weekend restart is no gap).

    previous = ledger.begin_run(now_ns, source="ib")
    record_downtime(ledger, previous, now_ns, contracts)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ib_stream.calendars import MarketSessions
from ib_stream.domain import Contract, StreamKey
from ib_stream.store.gaps import BackfillState, GapLedger, GapReason, ServiceRun
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


def record_downtime(
    ledger: GapLedger,
    previous: ServiceRun | None,
    now_ns: int,
    contracts: Sequence[Contract],
    backfill: BackfillState = BackfillState.PENDING,
) -> int:
    """Record the downtime since `previous` as gaps on every configured stream; return how many were recorded."""
    if previous is None or previous.down_from_ns >= now_ns:
        return 0
    reason = GapReason.SERVICE_CRASH if previous.crashed else GapReason.SERVICE_DOWN
    how = "crashed (no clean stop; last alive" if previous.crashed else "was stopped (at"
    since = iso_us(previous.down_from_ns)
    count = 0
    for contract in contracts:
        for lo, hi in open_intervals(contract, previous.down_from_ns, now_ns):
            detail = f"service {how} {since}) until it started again (run {previous.id + 1})"
            for tick_type in contract.tick_types:
                ledger.add(StreamKey(contract.con_id, tick_type), lo, hi, reason, detail, backfill)
                count += 1
    if count:
        log.warning("service %s: %d gap(s) recorded over the configured streams", reason.value.replace("_", " "), count)
    return count
