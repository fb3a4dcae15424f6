"""Backfill a span of a stream from IB's historical ticks (source `ib_hist`), never duplicating stored ticks.

    backfiller = Backfiller(store, fetch, gate=gate)   # fetch(contract, start_ns, what) -> raw ibapi ticks
    result = await backfiller.fill(contract, TickType.BID_ASK, start_ns, end_ns, progress=bar.update)
    await backfiller.fill_gap(gap, contract)       # the same, and the outcome goes into the gap ledger

Paging: reqHistoricalTicks returns up to 1,000 ticks from a whole second onwards. The next request
starts at the second of the last tick received (IB may have cut that second short); the ticks of
that second already received are not taken twice. A second holding more than a page moves on to
the next second (IB cannot page inside one second).

The span's first second is requested whole: IB stamps ticks with whole seconds, so a gap that starts
at 14:00:00.4 may have missed ticks stamped 14:00:00.

No duplicates: ticks already stored for the span — from any source, live or an earlier backfill —
are matched by (second, prices, sizes) and skipped, counting multiplicity (two identical trades in
one second stay two). IB tick-by-tick times have 1-second resolution, reqMktData ticks are stamped
on receipt, so the second is the common key.

Atomic with live data: the pages are downloaded first (without any lock: the answers come through
the same event loop as the live ticks), then the read of what is held and the append of what is
not run while holding the stream's lock of the `OverlapGate` the live path uses too, and what was
appended in the span's last seconds is remembered so a live copy arriving later is dropped
(`ib_overlap`). A backfiller made without the IB source's gate gets its own (its spans are then
serialised only with each other: right for `ib-stream backfill` with the service stopped).

A request whose connection closed before the answer came (`HistoryInterrupted`) leaves the gap
`pending` with a note: the next connection backfills it again.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.sources import ib_parsing as parse
from ib_stream.sources.ib_history import TICKS_PER_REQUEST, HistoryInterrupted
from ib_stream.sources.ib_overlap import KEY_FIELDS, OverlapGate, tick_key
from ib_stream.store.gaps import BackfillState, Gap
from ib_stream.store.schema import table_to_records
from ib_stream.store.tickstore import TickStore
from ib_stream.times import iso_us

log = logging.getLogger(__name__)

WHAT_TO_SHOW: Final[dict[TickType, str]] = {
    TickType.BID_ASK: "BID_ASK",
    TickType.LAST: "TRADES",
    TickType.ALL_LAST: "TRADES",
    TickType.MID_POINT: "MIDPOINT",
}
_CONVERT: Final[dict[str, Callable[[Sequence[Any]], list[dict[str, Any]]]]] = {
    "BID_ASK": parse.ticks_from_historical_bid_ask,
    "TRADES": parse.ticks_from_historical_last,
    "MIDPOINT": parse.ticks_from_historical_midpoint,
}
Fetch = Callable[[Contract, int, str], Awaitable[Sequence[Any]]]
Progress = Callable[[int], None]  # nanoseconds of the span covered so far


@dataclass(frozen=True, slots=True)
class BackfillResult:
    """What one backfill did."""

    stream: StreamKey
    start_ns: int
    end_ns: int
    received: int  # ticks IB returned inside the span
    stored: int  # ticks appended
    duplicates: int  # ticks skipped: already stored
    requests: int

    def summary(self) -> dict[str, Any]:
        return {
            "tick_type": self.stream.tick_type.value,
            "start": iso_us(self.start_ns),
            "end": iso_us(self.end_ns),
            "received": self.received,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "requests": self.requests,
        }

    def describe(self) -> str:
        return (
            f"{self.stream.tick_type.value} {iso_us(self.start_ns)} .. {iso_us(self.end_ns)}: {self.received} received, "
            f"{self.stored} stored, {self.duplicates} already held, {self.requests} requests"
        )


def backfillable(tick_type: TickType) -> bool:
    """Whether IB has historical ticks for this tick type (it has none for depth)."""
    return tick_type in WHAT_TO_SHOW


class Backfiller:
    """Fills spans of streams from IB history into the store (see the module docstring)."""

    def __init__(
        self,
        store: TickStore,
        fetch: Fetch,
        *,
        max_seconds: float | None = None,
        page_size: int = TICKS_PER_REQUEST,
        gate: OverlapGate | None = None,
    ) -> None:
        self.store = store
        self.fetch = fetch
        self.max_seconds = max_seconds
        self.page_size = page_size  # ticks one request returns at most (fewer: nothing more to page through)
        self.gate = gate if gate is not None else OverlapGate()  # shared with the live path of the IB source

    async def fill(
        self,
        contract: Contract,
        tick_type: TickType,
        start_ns: int,
        end_ns: int,
        progress: Progress | None = None,
    ) -> BackfillResult:
        """Request [start_ns, end_ns) of one stream from IB and store what is not held yet."""
        what = WHAT_TO_SHOW.get(tick_type)
        if what is None:
            raise ValueError(f"IB has no historical ticks for {tick_type.value}")
        stream = StreamKey(contract.con_id, tick_type)
        received, requests = await self._download(contract, what, start_ns, end_ns, progress)
        async with self.gate.lock(stream):  # read what is held and append the rest as one step (module docstring)
            fresh = await self._not_held(stream, received, start_ns, end_ns)
            batch = self.store.config.batch_size
            for i in range(0, len(fresh), batch):
                await self.store.append_batch(contract.con_id, tick_type, fresh[i : i + batch], parse.SOURCE_HIST)
            self.gate.backfilled(stream, fresh, end_ns)
        result = BackfillResult(
            stream, start_ns, end_ns, len(received), len(fresh), len(received) - len(fresh), requests
        )
        log.info("IB backfill %s %s", contract.symbol, result.describe())
        return result

    async def fill_gap(self, gap: Gap, contract: Contract) -> BackfillResult | None:
        """Backfill one closed gap and record the outcome in the ledger (None: nothing to request)."""
        ledger = self.store.gaps
        if gap.end_ns is None:
            return None
        if not backfillable(gap.stream.tick_type):
            note = f"IB has no history for {gap.tick_type}"
            await asyncio.to_thread(ledger.set_backfill, gap.id, BackfillState.NOT_POSSIBLE, 0, note)
            return None
        end_ns, note = gap.end_ns, ""
        if self.max_seconds is not None and end_ns - gap.start_ns > self.max_seconds * NS_PER_SECOND:
            end_ns = gap.start_ns + int(self.max_seconds * NS_PER_SECOND)
            note = f"filled up to {iso_us(end_ns)} (ib.backfill_max_seconds); `ib-stream backfill` can do the rest"
        try:
            result = await self.fill(contract, gap.stream.tick_type, gap.start_ns, end_ns)
        except HistoryInterrupted as e:
            note = f"interrupted ({e}): backfilled again on the next connection"
            await asyncio.to_thread(ledger.set_backfill, gap.id, BackfillState.PENDING, 0, note)
            raise
        except Exception as e:
            await asyncio.to_thread(ledger.set_backfill, gap.id, BackfillState.FAILED, 0, str(e))
            raise
        state = BackfillState.PARTIAL if note else BackfillState.DONE
        await asyncio.to_thread(ledger.set_backfill, gap.id, state, result.stored, note or result.describe())
        return result

    async def fill_span(
        self,
        contract: Contract,
        tick_type: TickType,
        start_ns: int,
        end_ns: int,
        progress: Progress | None = None,
    ) -> tuple[BackfillResult, int]:
        """`fill` on demand, then mark the ledger's gaps of the stream inside the span as backfilled.

        Returns the result and how many recorded gaps were marked.
        """
        result = await self.fill(contract, tick_type, start_ns, end_ns, progress)
        ledger, note = self.store.gaps, f"backfilled on demand: {iso_us(start_ns)} .. {iso_us(end_ns)}"

        def mark() -> int:
            covered = [
                g
                for g in ledger.gaps(contract.con_id, start_ns, end_ns, tick_type=tick_type)
                if g.end_ns is not None and start_ns <= g.start_ns and g.end_ns <= end_ns and g.backfill != "done"
            ]
            for gap in covered:
                ledger.set_backfill(gap.id, BackfillState.DONE, 0, note)
            return len(covered)

        return result, await asyncio.to_thread(mark)

    async def _download(
        self, contract: Contract, what: str, start_ns: int, end_ns: int, progress: Progress | None
    ) -> tuple[list[dict[str, Any]], int]:
        convert = _CONVERT[what]
        # IB stamps ticks with whole seconds: the span's first second counts whole (stored ticks are deduplicated).
        cursor = cursor_floor = start_ns - start_ns % NS_PER_SECOND
        out: list[dict[str, Any]] = []
        last_second: list[dict[str, Any]] = []  # ticks already taken in the second the next page starts at
        requests = 0
        while cursor < end_ns:
            raw = await self.fetch(contract, cursor, what)
            requests += 1
            page = convert(raw)
            repeat = collections.Counter(tuple(sorted(t.items())) for t in last_second)
            new = []
            for tick in page:
                key = tuple(sorted(tick.items()))
                if tick["ts"] < cursor + NS_PER_SECOND and repeat[key] > 0:
                    repeat[key] -= 1
                    continue
                new.append(tick)
            out += [t for t in new if cursor_floor <= t["ts"] < end_ns]
            if len(raw) < self.page_size or not page or page[-1]["ts"] >= end_ns:
                break
            last_ts = page[-1]["ts"]
            next_cursor = last_ts - last_ts % NS_PER_SECOND
            if next_cursor <= cursor:  # a whole page inside one second: IB cannot page further into it
                next_cursor = cursor + NS_PER_SECOND
            last_second = [t for t in page if t["ts"] >= next_cursor]
            cursor = next_cursor
            if progress is not None:
                progress(min(cursor, end_ns) - start_ns)
        if progress is not None:
            progress(end_ns - start_ns)
        return out, requests

    async def _not_held(
        self, stream: StreamKey, ticks: list[dict[str, Any]], start_ns: int, end_ns: int
    ) -> list[dict[str, Any]]:
        if not ticks:
            return []
        lo = start_ns - start_ns % NS_PER_SECOND
        hi = end_ns - end_ns % NS_PER_SECOND + NS_PER_SECOND
        columns = ["ts", *KEY_FIELDS[stream.tick_type]]

        def read() -> list[dict[str, Any]]:
            return table_to_records(self.store.engine.read_stream(stream, lo, hi, columns))

        held = collections.Counter(
            tick_key(stream.tick_type, t)
            for t in await asyncio.get_running_loop().run_in_executor(self.store.executor, read)
        )
        fresh = []
        for tick in ticks:
            key = tick_key(stream.tick_type, tick)
            if held[key] > 0:
                held[key] -= 1
            else:
                fresh.append(tick)
        return fresh
