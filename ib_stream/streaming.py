"""StreamingApp: takes ticks from sources, stores them (the store assigns seq / recv_ts), and fans
every durable tick out to live subscribers in seq order, with backpressure that never drops
silently: storage is never skipped, and a subscriber that falls too far behind is disconnected
with an error message (counted).

Event time is checked where ticks are published: a tick whose `ts` is further ahead of the store's
clock than `future_skew` allows (`source_max_future_skew_seconds` for live sources; the ingest route
passes `api.max_future_skew_seconds`) is refused like any invalid tick (`times.check_event_time`).

When the store refuses a batch (a full disk, an I/O error: `StorageWriteError`), `publish` raises
to its caller — a source drops the batch and carries on, `POST /v2/ticks` answers 507 / 503 — and
notes the outage of that stream; once a batch of the stream is stored again, the outage becomes a
`storage_error` gap in the ledger (from the last tick stored before it to the first after it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.errors import (
    ContractNotFoundError,
    IbStreamError,
    SlowConsumerError,
    StorageError,
    StorageWriteError,
    TickValidationError,
)
from ib_stream.store.buffer import AppendResult, OnError
from ib_stream.store.gaps import BackfillState, GapReason
from ib_stream.store.schema import table_to_records
from ib_stream.store.tickstore import TickStore
from ib_stream.times import FutureSkew, iso_us, screen_event_times

log = logging.getLogger(__name__)
LiveItem = tuple[StreamKey, dict[str, Any]]


class TickSource(Protocol):
    """Anything that produces ticks into a StreamingApp until cancelled."""

    name: str

    async def run(self, app: StreamingApp) -> None: ...


@dataclass(slots=True)
class StreamingStats:
    """Counters exposed as metrics."""

    ticks_published: int = 0
    ticks_fanned_out: int = 0
    slow_disconnects: int = 0
    source_errors: int = 0
    future_ticks_refused: int = 0  # ticks whose ts was too far ahead of the clock
    last_lag_seconds: float = 0.0  # receive time -> fan-out of the latest tick
    lag_samples: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=4096))


@dataclass(slots=True)
class _StorageOutage:
    """A stream whose ticks the store refused: from when, how many, why (becomes a `storage_error` gap)."""

    start_ns: int
    ticks: int
    code: str
    reason: str
    sources: set[str]


class Subscription:
    """One live subscriber's queue of (stream, record) items."""

    def __init__(self, sub_id: int, contract_id: int, tick_types: Iterable[TickType], max_queue: int) -> None:
        self.id = sub_id
        self.contract_id = contract_id
        self.tick_types = frozenset(tick_types)
        self.max_queue = max_queue
        self.error: IbStreamError | None = None
        self.closed = False
        self._items: collections.deque[LiveItem] = collections.deque()
        self._ready = asyncio.Event()

    def offer(self, stream: StreamKey, records: Sequence[dict[str, Any]]) -> bool:
        """Queue records; return False (and fail the subscription) when it is too far behind."""
        if self.closed:
            return True
        if len(self._items) + len(records) > self.max_queue:
            self.error = SlowConsumerError(
                f"subscriber fell more than {self.max_queue} messages behind and was disconnected",
                details={"max_queue": self.max_queue},
            )
            self._items.clear()
            self._ready.set()
            return False
        self._items.extend((stream, r) for r in records)
        self._ready.set()
        return True

    async def get(self, timeout: float | None = None) -> list[LiveItem]:
        """Wait up to `timeout` seconds for items; return them all ([] on timeout); raise if disconnected."""
        if not self._items and self.error is None and not self.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout)
        if self.error is not None:
            raise self.error
        items = list(self._items)
        self._items.clear()
        self._ready.clear()
        return items

    def close(self) -> None:
        """Stop receiving; a `get` waiting now returns at once."""
        self.closed = True
        self._ready.set()

    def resize(self, max_queue: int) -> None:
        """Change how far behind this subscriber may fall before it is disconnected."""
        self.max_queue = max_queue


class StreamingApp:
    """The live hub: one per service, bound to one event loop and one store."""

    def __init__(
        self,
        store: TickStore,
        contracts: Sequence[Contract],
        *,
        queue_size: int = 10_000,
        future_skew: FutureSkew | None = None,
    ) -> None:
        self.store = store
        self.future_skew = future_skew  # live sources' limit on event time (None: not checked, e.g. a replay tool)
        self.contracts = {c.con_id: c for c in contracts}
        self.queue_size = queue_size
        self.stats = StreamingStats()
        self._subs: dict[StreamKey, dict[int, Subscription]] = collections.defaultdict(dict)
        self._latest: dict[StreamKey, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outages: dict[StreamKey, _StorageOutage] = {}
        self.sources: list[TickSource] = []

    # ---- lifecycle ---------------------------------------------------------------------------------
    async def start(self, sources: Sequence[TickSource] = ()) -> None:
        """Hook into the store's durable-tick listener and start the sources."""
        self._loop = asyncio.get_running_loop()
        self.store.buffer.listeners.append(self._from_writer)
        for source in sources:
            self.sources.append(source)
            self._tasks.append(asyncio.create_task(self._run_source(source), name=f"source-{source.name}"))

    async def stop(self) -> None:
        """Stop the sources (ticks already handed to the store stay durable) and close subscribers."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        with contextlib.suppress(ValueError):
            self.store.buffer.listeners.remove(self._from_writer)
        for subs in self._subs.values():
            for sub in subs.values():
                sub.close()
        now = self.store.clock.now_ns()
        for stream in list(self._outages):  # still refused at shutdown: the gap ends now
            await self._record_outage(stream, now)

    async def _run_source(self, source: TickSource) -> None:
        try:
            await source.run(self)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.stats.source_errors += 1
            log.exception("source %s stopped with an error", source.name)

    # ---- ingest ------------------------------------------------------------------------------------
    async def publish(
        self,
        contract_id: int,
        tick_type: TickType | str,
        ticks: Sequence[Any],
        source: str,
        on_error: OnError = "reject",
        *,
        future_skew: FutureSkew | None = None,
    ) -> AppendResult:
        """Store ticks (durably) — they reach live subscribers from the store's listener, in seq order.

        A tick whose `ts` is more than `future_skew` (default: the app's, for live sources) ahead of the store's
        clock is refused: with `on_error="reject"` the batch raises TickValidationError naming it and nothing is
        stored; with `"skip"` it is left out and listed in `rejected` with the store's own rejections.

        Raises `StorageWriteError` / `StorageFullError` when the store cannot write: nothing of the batch is
        stored, and the stream's outage is recorded as a `storage_error` gap once it stores again.
        """
        skew = future_skew or self.future_skew
        try:
            if skew is None:
                result = await self.store.append_batch(contract_id, tick_type, ticks, source, on_error)
            else:
                result = await self._publish_checked(contract_id, tick_type, ticks, source, on_error, skew)
        except StorageWriteError as e:
            stream = StreamKey(
                int(contract_id), tick_type if isinstance(tick_type, TickType) else TickType.parse(tick_type)
            )
            self._note_outage(stream, ticks, source, e)
            raise
        self.stats.ticks_published += result.count
        if result.stream in self._outages and result.count:
            await self._record_outage(result.stream, _first_ts(ticks) or self.store.clock.now_ns())
        return result

    async def _publish_checked(
        self,
        contract_id: int,
        tick_type: TickType | str,
        ticks: Sequence[Any],
        source: str,
        on_error: OnError,
        skew: FutureSkew,
    ) -> AppendResult:
        name = tick_type.value if isinstance(tick_type, TickType) else str(tick_type)
        try:
            kept, refused = screen_event_times(
                ticks, self.store.clock.now_ns(), skew.max_ns, tick_type=name, setting=skew.setting, on_error=on_error
            )
        except TickValidationError:
            self.stats.future_ticks_refused += 1
            raise
        if not refused:
            return await self.store.append_batch(contract_id, tick_type, ticks, source, on_error)
        self.stats.future_ticks_refused += len(refused)
        result = await self.store.append_batch(contract_id, tick_type, [ticks[i] for i in kept], source, on_error)
        for error in result.rejected:  # the store numbered the kept ticks: give them their place in the batch
            error.details["index"] = kept[int(error.details.get("index", 0))]
        rejected = sorted((*result.rejected, *refused), key=lambda e: int(e.details.get("index", 0)))
        return replace(result, rejected=tuple(rejected))

    def _note_outage(self, stream: StreamKey, ticks: Sequence[Any], source: str, error: StorageWriteError) -> None:
        outage = self._outages.get(stream)
        if outage is None:
            latest = self._latest.get(stream)
            first = _first_ts(ticks) or self.store.clock.now_ns()
            start = min(first, latest["ts"]) if latest is not None else first  # no later than the last tick stored
            outage = self._outages[stream] = _StorageOutage(
                start, 0, error.code, str(error.details.get("reason")), set()
            )
            log.warning(
                "stream %s: the store refuses writes (%s): its ticks are dropped until it recovers", stream, error.code
            )
        outage.ticks += len(ticks)
        outage.sources.add(source)

    async def _record_outage(self, stream: StreamKey, end_ns: int) -> None:
        outage = self._outages.pop(stream)
        detail = (
            f"the store refused writes ({outage.code}: {outage.reason}) from {iso_us(outage.start_ns)}: "
            f"{outage.ticks} tick(s) from {', '.join(sorted(outage.sources))} were dropped"
        )
        ib = any(s.startswith("ib_") for s in outage.sources)  # IB's history can fill it; nothing else can
        backfill = BackfillState.PENDING if ib else BackfillState.OFF
        try:
            await asyncio.to_thread(
                self.store.gaps.add,
                stream,
                outage.start_ns,
                max(outage.start_ns, end_ns),
                GapReason.STORAGE_ERROR,
                detail,
                backfill,
            )
        except StorageError as e:  # the ledger shares the disk: try again with the next stored batch
            self._outages.setdefault(stream, outage)
            log.warning("stream %s: the storage_error gap cannot be recorded yet: %s", stream, e)
            return
        log.warning("stream %s: stored again; recorded a storage_error gap: %s", stream, detail)

    def publish_live(self, stream: StreamKey, records: Sequence[dict[str, Any]]) -> None:
        """Fan out records without storing them (the replay source)."""
        self._fanout(stream, list(records))

    def source_status(self) -> dict[str, dict[str, Any]]:
        """`status()` of every running source that reports one (the IB source), by source name."""
        out = {}
        for source in self.sources:
            status = getattr(source, "status", None)
            if callable(status):
                out[source.name] = status()
        return out

    @property
    def started(self) -> bool:
        """Whether `start` ran (and `stop` has not): durable ticks reach the subscribers."""
        return self._from_writer in self.store.buffer.listeners

    def _from_writer(self, stream: StreamKey, records: list[dict[str, Any]]) -> None:
        # Called on the buffer's writer thread; call_soon_threadsafe keeps the batches in order.
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._fanout, stream, records)

    def _fanout(self, stream: StreamKey, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        self._latest[stream] = records[-1]
        lag = time.time_ns() - records[-1]["recv_ts"]
        self.stats.last_lag_seconds = lag / NS_PER_SECOND
        self.stats.lag_samples.append(self.stats.last_lag_seconds)
        subs = self._subs.get(stream)
        if not subs:
            return
        for sub in list(subs.values()):
            if not sub.offer(stream, records):
                self.stats.slow_disconnects += 1
                log.warning("disconnected slow subscriber %d of %s", sub.id, stream)
                self.unsubscribe(sub)
            else:
                self.stats.ticks_fanned_out += len(records)

    # ---- subscribers ---------------------------------------------------------------------------------
    def subscribe(self, contract_id: int, tick_types: Iterable[TickType], max_queue: int | None = None) -> Subscription:
        """Start receiving every durable tick of these streams from now on."""
        self.require_contract(contract_id)
        sub = Subscription(next(self._ids), contract_id, tick_types, max_queue or self.queue_size)
        for tick_type in sub.tick_types:
            self._subs[StreamKey(contract_id, tick_type)][sub.id] = sub
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.close()
        for tick_type in sub.tick_types:
            self._subs.get(StreamKey(sub.contract_id, tick_type), {}).pop(sub.id, None)

    @property
    def subscriber_count(self) -> int:
        return len({sub.id for subs in self._subs.values() for sub in subs.values()})

    def latest(self, contract_id: int, tick_types: Iterable[TickType]) -> dict[TickType, dict[str, Any] | None]:
        """The most recent durable tick of each stream, from memory."""
        self.require_contract(contract_id)
        return {
            t: self._latest.get(StreamKey(contract_id, t)) or self._latest_from_hot(StreamKey(contract_id, t))
            for t in tick_types
        }

    def _latest_from_hot(self, stream: StreamKey) -> dict[str, Any] | None:
        hot = self.store.buffer.hot(stream)
        if hot is None:
            return None
        snapshot = hot.snapshot()
        if not snapshot.chunks or snapshot.chunks[-1].table.num_rows == 0:
            return None
        table = snapshot.chunks[-1].table
        record = table_to_records(table.slice(table.num_rows - 1))[0]
        self._latest[stream] = record
        return record

    def require_contract(self, contract_id: int) -> Contract:
        """The configured contract, or ContractNotFoundError (CONTRACT_NOT_FOUND) naming the id and the known ones."""
        contract = self.contracts.get(contract_id)
        if contract is None:
            known = ", ".join(str(c) for c in sorted(self.contracts))
            raise ContractNotFoundError(
                f"contract_id {contract_id} is not configured (known: {known})",
                details={"field": "contract_id", "value": contract_id, "known": sorted(self.contracts)},
            )
        return contract


def _first_ts(ticks: Sequence[Any]) -> int | None:
    """The earliest integer `ts` of a batch of tick dicts (None when it has none)."""
    stamps = [t.get("ts") for t in ticks if isinstance(t, dict)]
    ints = [t for t in stamps if isinstance(t, int) and not isinstance(t, bool)]
    return min(ints) if ints else None
