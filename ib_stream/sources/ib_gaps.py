"""The IB source's side of the gap ledger: opening and closing gaps of its streams, and backfilling closed ones.

    gaps = SourceGaps(config, contracts, clock)
    gaps.bind(store.gaps)                            # the ledger (None: gaps are not recorded)
    gaps.open(GapReason.DISCONNECT, "IB connection closed")
    gaps.close(CONNECTION_GAPS)                      # also asks for a backfill
    await gaps.backfill_forever(backfiller, connected=lambda: ...)

Ledger writes are SQLite commits: they run on worker threads, one after the other in the order they
were asked for (an asyncio.Lock's waiters are served FIFO), never on the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Sequence
from typing import Any

from ib_stream.clock import Clock
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.settings import IbConfig
from ib_stream.sources.ib_backfill import Backfiller, BackfillResult
from ib_stream.store.gaps import BackfillState, GapLedger, GapReason

log = logging.getLogger(__name__)


class SourceGaps:
    """Gaps of the configured streams of one IB source (see the module docstring)."""

    def __init__(self, config: IbConfig, contracts: Sequence[Contract], clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.streams = [StreamKey(c.con_id, t) for c in contracts for t in c.tick_types]
        self.backfills: collections.deque[BackfillResult] = collections.deque(maxlen=100)
        self._by_id = {c.con_id: c for c in contracts}
        self._ledger: GapLedger | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._backfill_wanted = asyncio.Event()
        self._refused_open: set[StreamKey] = set()  # streams with an open subscription_refused gap

    def bind(self, ledger: GapLedger | None) -> None:
        self._ledger = ledger
        self._backfill_wanted.set()  # gaps left pending by an earlier run (service down, crash)

    # --- ledger writes ----------------------------------------------------------------------------------------
    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        async def call() -> None:
            async with self._lock:
                try:
                    await asyncio.to_thread(fn, *args)
                except Exception:
                    log.exception("gap ledger update %s failed", getattr(fn, "__name__", fn))

        task = asyncio.get_running_loop().create_task(call())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settled(self) -> None:
        """Wait until every ledger write asked for so far is done."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def open(self, reason: GapReason, detail: str, code: int | None = None, start_ns: int | None = None) -> None:
        """Open a gap on every stream that has none open."""
        if self._ledger is not None:
            start = self.clock.now_ns() if start_ns is None else start_ns
            self._call(self._ledger.open_gaps, self.streams, start, reason, detail, code)

    def close(self, reasons: Sequence[GapReason], streams: Sequence[StreamKey] | None = None) -> None:
        """Close the open gaps of `reasons` (on every stream, or `streams`) now, and ask for a backfill."""
        if self._ledger is None:
            return
        ledger, now = self._ledger, self.clock.now_ns()
        wanted = list(self.streams if streams is None else streams)
        enabled = self.config.backfill_after_reconnect

        def close() -> None:
            for gap in ledger.close_gaps(wanted, now, reasons):
                if not enabled:
                    ledger.set_backfill(gap.id, BackfillState.OFF, note="ib.backfill_after_reconnect is off")

        self._call(close)
        self._backfill_wanted.set()

    def refused(self, contract: Contract, what: TickType | str, why: str) -> None:
        """A subscription was refused: a gap on its stream(s) until their data flows."""
        if isinstance(what, TickType):
            streams = [StreamKey(contract.con_id, what)]
        else:  # the whole contract
            streams = [StreamKey(contract.con_id, t) for t in contract.tick_types]
        if self._ledger is not None:
            self._refused_open.update(streams)
            now = self.clock.now_ns()
            self._call(self._ledger.open_gaps, streams, now, GapReason.SUBSCRIPTION_REFUSED, why, None)

    def data_flowed(self, con_id: int, tick_types: set[TickType]) -> None:
        """Data arrived for these streams: a refused-subscription gap on them ends."""
        if not self._refused_open:
            return
        flowing = [s for s in (StreamKey(con_id, t) for t in tick_types) if s in self._refused_open]
        if flowing:
            self._refused_open.difference_update(flowing)
            self.close([GapReason.SUBSCRIPTION_REFUSED], flowing)

    # --- backfill --------------------------------------------------------------------------------------------
    async def backfill_forever(self, backfiller: Backfiller, connected: Callable[[], bool]) -> None:
        """Whenever asked (a gap closed, start-up), backfill every closed pending gap of the streams."""
        while True:
            await self._backfill_wanted.wait()
            self._backfill_wanted.clear()
            if not self.config.backfill_after_reconnect or self._ledger is None:
                continue
            await self.settled()
            gaps = await asyncio.to_thread(self._ledger.gaps, backfill=[BackfillState.PENDING])
            for gap in gaps:
                contract = self._by_id.get(gap.contract_id)
                if contract is None or gap.end_ns is None or gap.stream not in self.streams:
                    continue
                if not connected():
                    break  # the next session closes its gaps, which asks again
                try:
                    result = await backfiller.fill_gap(gap, contract)
                except Exception as e:
                    # Python 3.11's wait_for can turn a cancellation into the request's own error: keep it.
                    if (task := asyncio.current_task()) is not None and task.cancelling():
                        raise asyncio.CancelledError from e
                    log.warning("IB backfill of gap %d (%s %s) failed: %s", gap.id, contract.symbol, gap.tick_type, e)
                    continue
                if result is not None:
                    self.backfills.append(result)
