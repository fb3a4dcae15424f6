"""The IB source's side of the gap ledger: which streams are covered, the gaps of the others, and backfill.

    gaps = SourceGaps(config, contracts, clock)
    await gaps.start(store)                                   # bind the ledger; see "At start-up"
    gaps.lost(streams, GapReason.DISCONNECT, "IB connection closed")
    gaps.received(stream, end_ns)                             # a live tick of a stream arrived
    gaps.flowing(con_id, tick_types, recv_ns)                 # data on a subscription of the current connection
    gaps.stored(stream, newest_ts)                            # live ticks of a stream are durable
    gaps.acknowledged(streams, recv_ns)                       # TWS processed these subscriptions
    await gaps.backfill_forever(backfiller, connected=lambda: ...)

Every configured stream is either *covered* (its data is known to flow) or has exactly one open
gap in the ledger (DESIGN §5, invariant 9: every instant between a stream's first and last tick is
stored exactly once or lies inside a gap with a reason).

When a gap starts: `lost` opens it at the stream's `since` (or now, if that is earlier) — the
event time of the newest live tick stored for the stream (received ticks still on their way to the
store are younger), or the instant its previous gap ended (until the first of either, the start of
the run; both rounded down to their second, as IB stamps ticks with whole seconds). Never at detection:
ibapi notices a closed socket up to 0.2 s late, and ticks of the same second that were in flight
then are inside the gap, so the backfill fetches them.

When it ends: with data of the stream on a subscription of the current connection
(`received` / `flowing`: a tick-by-tick tick ends it just after the start of the tick's second,
a tick stamped on receipt at that receipt), or when TWS acknowledges the subscription
(`acknowledged`: the reply of the reqCurrentTime barrier sent after it, see `ib_subscriptions`)
— never when a request is queued. A stream whose subscription was refused, or went stale, is
`data_only`: only its data ends its gap.

At start-up: a stream with an open gap (the downtime gap `record_downtime` left open) or with
stored ticks starts uncovered — a service that has just started has subscribed nothing yet — so
its gap lasts until the first subscription is acknowledged or its data flows.

Backfill: a closed gap is filled once the last second it touches is over plus
`ib.backfill_delay_seconds` (IB's history of a second still in progress is only part of it; see
`ib_overlap`). A gap whose history request was cut off by a disconnect stays pending and is tried
again when the next connection closes a gap.

Ledger writes are SQLite commits: they run on worker threads, one after the other in the order they
were asked for (an asyncio.Lock's waiters are served FIFO), never on the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from ib_stream.clock import NS_PER_SECOND, Clock
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.settings import IbConfig
from ib_stream.sources.ib_backfill import Backfiller, BackfillResult, backfillable
from ib_stream.store.downtime import last_tick_times
from ib_stream.store.gaps import BackfillState, GapLedger, GapReason
from ib_stream.store.tickstore import TickStore

log = logging.getLogger(__name__)
RECHECK_SECONDS: Final = 0.25  # how often gaps waiting for their last second to pass are looked at again


class SourceGaps:
    """Coverage and gaps of the configured streams of one IB source (see the module docstring)."""

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
        self._since: dict[StreamKey, int] = {}  # where a new gap of a covered stream starts at the latest
        self._open: dict[StreamKey, bool] = {}  # uncovered streams -> data_only (only their data ends the gap)
        self._closing: dict[StreamKey, int] = {}  # gap ends not written yet
        self._flush_scheduled = False

    def uncovered(self) -> dict[StreamKey, bool]:
        """Streams with an open gap -> whether only their data ends it."""
        return dict(self._open)

    async def start(self, store: TickStore | None) -> None:
        """Bind the ledger of `store` (None: gaps are not recorded) and start every stream as the module says."""
        now = self.clock.now_ns()
        self._since = dict.fromkeys(self.streams, now - now % NS_PER_SECOND)  # IB stamps whole seconds
        if store is None:
            return
        ledger = self._ledger = store.gaps
        contracts = list(self._by_id.values())

        def read() -> tuple[set[StreamKey], dict[StreamKey, int]]:
            return {g.stream for g in ledger.gaps(open_only=True)}, last_tick_times(store, contracts)

        open_now, stored = await asyncio.to_thread(read)
        for stream in self.streams:
            if stream in open_now:
                self._open[stream] = False
        starting = [s for s in self.streams if s in stored and s not in open_now]
        self.lost(starting, GapReason.DISCONNECT, "IB source starting: not subscribed yet")
        self._backfill_wanted.set()  # gaps left pending by an earlier run (service down, crash)

    # --- coverage --------------------------------------------------------------------------------------------
    def lost(
        self,
        streams: Iterable[StreamKey],
        reason: GapReason,
        detail: str,
        code: int | None = None,
        *,
        data_only: bool = False,
    ) -> None:
        """Data of these streams may be missing from now on: each covered one gets a gap from its `since`."""
        now = self.clock.now_ns()
        starts = {}
        for stream in streams:
            if stream in self._open:
                self._open[stream] = self._open[stream] or data_only
                continue
            self._open[stream] = data_only
            starts[stream] = min(now, self._since.get(stream, now))
        if starts and self._ledger is not None:
            self._flush_closes()  # a stream's earlier close is written before its new gap
            self._call(self._ledger.open_each, starts, reason, detail, code)

    def refused(self, contract: Contract, what: TickType | str, why: str) -> None:
        """A subscription was refused: a gap on its stream(s) (all of the contract's) until their data flows."""
        if isinstance(what, TickType):
            streams = [StreamKey(contract.con_id, what)]
        else:  # the whole contract
            streams = [StreamKey(contract.con_id, t) for t in contract.tick_types]
        self.lost(streams, GapReason.SUBSCRIPTION_REFUSED, why, data_only=True)

    def received(self, stream: StreamKey, end_ns: int) -> None:
        """A live tick of `stream` arrived: its open gap ends at `end_ns`."""
        if stream in self._open:
            self._end(stream, end_ns)

    def stored(self, stream: StreamKey, newest_ts: int) -> None:
        """Live ticks of `stream` up to `newest_ts` are durable: a later gap starts no later than that."""
        if newest_ts > self._since.get(stream, newest_ts - 1):
            self._since[stream] = newest_ts

    def flowing(self, con_id: int, tick_types: Iterable[TickType], recv_ns: int) -> None:
        """Data arrived at `recv_ns` on a subscription of these streams: their open gaps end."""
        if self._open:
            for tick_type in tick_types:
                stream = StreamKey(con_id, tick_type)
                if stream in self._open:
                    self._end(stream, recv_ns)

    def acknowledged(self, streams: Iterable[StreamKey], recv_ns: int) -> None:
        """TWS processed the subscriptions of these streams by `recv_ns`: their gaps end (not `data_only` ones)."""
        for stream in streams:
            if self._open.get(stream) is False:
                self._end(stream, recv_ns)

    def _end(self, stream: StreamKey, end_ns: int) -> None:
        del self._open[stream]
        self._since[stream] = max(self._since.get(stream, end_ns), end_ns - end_ns % NS_PER_SECOND)
        self._closing[stream] = end_ns
        if not self._flush_scheduled and self._ledger is not None:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_closes)

    def _flush_closes(self) -> None:
        self._flush_scheduled = False
        if not self._closing or self._ledger is None:
            self._closing.clear()
            return
        ends, self._closing = self._closing, {}
        ledger, enabled = self._ledger, self.config.backfill_after_reconnect

        def close() -> None:
            for gap in ledger.close_each(ends):
                if not enabled:
                    ledger.set_backfill(gap.id, BackfillState.OFF, note="ib.backfill_after_reconnect is off")

        self._call(close)
        self._backfill_wanted.set()

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
        self._flush_closes()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # --- backfill --------------------------------------------------------------------------------------------
    def backfill_ready_at(self, end_ns: int) -> int:
        """When a gap ending at `end_ns` may be backfilled: its last second is over, plus the configured delay."""
        last_second_over = (end_ns - 1) // NS_PER_SECOND * NS_PER_SECOND + NS_PER_SECOND
        return last_second_over + int(self.config.backfill_delay_seconds * NS_PER_SECOND)

    async def backfill_forever(self, backfiller: Backfiller, connected: Callable[[], bool]) -> None:
        """Whenever asked (a gap closed, start-up), backfill every closed pending gap of the streams."""
        loop = asyncio.get_running_loop()
        while True:
            await self._backfill_wanted.wait()
            self._backfill_wanted.clear()
            if not self.config.backfill_after_reconnect or self._ledger is None:
                continue
            await self.settled()
            gaps = await asyncio.to_thread(self._ledger.gaps, backfill=[BackfillState.PENDING])
            waiting = False
            for gap in gaps:
                contract = self._by_id.get(gap.contract_id)
                if contract is None or gap.end_ns is None or gap.stream not in self.streams:
                    continue
                if backfillable(gap.stream.tick_type) and self.clock.now_ns() < self.backfill_ready_at(gap.end_ns):
                    waiting = True  # its last second is not over yet: IB's history of it would be partial
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
            if waiting:
                loop.call_later(RECHECK_SECONDS, self._backfill_wanted.set)
