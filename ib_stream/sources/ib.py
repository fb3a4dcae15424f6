"""The Interactive Brokers source: connects through ibapi, subscribes every configured contract, stores its ticks.

    source = IbSource(settings.ib, contracts)          # a TickSource: await app.start([source])
    source.status()                                    # connection, subscriptions, refusals, reconnects, backfills

Life cycle: connect to `config.host` trying `config.ports` in order (bounded by
`connect_timeout_seconds`), wait for nextValidId, resolve every conId with reqContractDetails
(error 200: the contract is reported as not subscribed, the others go on), then subscribe
(`ib_subscriptions`: tick-by-tick, reqMktData fallback, depth; paced). Error 317 (depth reset) is
only logged: the depth stream stores IB's insert/update/delete rows, and a reader rebuilding a
book starts again from the rows that follow.

Errors go through `ib_errors.classify` and a table of handlers (`_ACTIONS`). Gaps go to the
store's gap ledger (`storage.gaps`) through `ib_gaps.SourceGaps`, per stream: a closed connection
opens one (reason disconnect) on every covered stream and reconnects with exponential backoff and
jitter, then resubscribes everything; 1100 opens one with its code; 1101/1102 open one (the
resubscription they call for cancels every subscription) and resubscribe; a refused or stopped
subscription opens one (subscription_refused) — a tick-by-tick one until its reqMktData fallback
is acknowledged, any other until its data flows; the service stopping opens one. Each starts no
later than the last tick received on its stream and ends when that stream's data flows again or
TWS acknowledges its new subscription (`ib_subscriptions` barriers) — see `ib_gaps`. A closed gap is
backfilled with reqHistoricalTicks (`ib_backfill`, paced by `ib_history`) when
`backfill_after_reconnect` is on — including the service-down gaps recorded at start-up — and the
overlap with live ticks is stored once (`ib_overlap`: live batches and a backfill's read-and-append
of a stream hold the same lock).

Threads: `IbConnection` runs ibapi's message loop on a daemon thread and hands every callback to
this loop; one consumer task converts them with `ib_parsing` and publishes them grouped per stream
(ticks arriving together are one `publish`), so the ibapi thread never waits for the store.
Ledger writes run on worker threads, in order, never on the event loop.

Watchdog: while connected, a contract whose subscriptions delivered no callback for
`stale_after_seconds` while its session is open (`MarketSessions.is_open_at(now, "extended")`;
a closed market or the daily break never counts) is resubscribed, and its streams get a gap
"stale_feed" that only their data ends; still silent after another `stale_after_seconds`, the
connection is dropped (logged as an error) and the reconnect loop takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any, Final

from ib_stream.calendars import MarketSessions
from ib_stream.clock import NS_PER_SECOND, Clock, SystemClock
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.settings import IbConfig
from ib_stream.sources import ib_parsing as parse
from ib_stream.sources.ib_backfill import Backfiller
from ib_stream.sources.ib_connection import IbConnection, IbEvent, ib_contract
from ib_stream.sources.ib_errors import Action, classify, format_error
from ib_stream.sources.ib_gaps import SourceGaps
from ib_stream.sources.ib_history import HistoryRequests
from ib_stream.sources.ib_overlap import OverlapGate
from ib_stream.sources.ib_pacing import Pacer
from ib_stream.sources.ib_subscriptions import Request, Subscriptions
from ib_stream.store.gaps import GapReason
from ib_stream.streaming import StreamingApp

log = logging.getLogger(__name__)

DATA_EVENTS: Final = frozenset({"tbt_bid_ask", "tbt_trade", "tbt_mid_point", "tick_price", "tick_size", "depth"})
FLUSH_AFTER_SECONDS: Final = 0.1  # settle reqMktData prices still waiting for their size after this quiet
# Closed when the connection is back (broker_unreachable: IB never answered since start-up).
CONNECTION_GAPS: Final = (GapReason.DISCONNECT, GapReason.STALE_FEED, GapReason.BROKER_UNREACHABLE)
StreamBatch = dict[tuple[int, TickType, str], list[dict[str, Any]]]


class IbSource:
    """TickSource recording every configured contract from TWS / IB Gateway (see the module docstring)."""

    name = "ib"

    def __init__(self, config: IbConfig, contracts: Sequence[Contract], clock: Clock | None = None) -> None:
        self.config = config
        self.contracts = list(contracts)
        self.clock = clock or SystemClock()
        self.reconnects = 0
        self.watchdog_checks = 0
        self._ids = itertools.count(1)
        self.gaps = SourceGaps(config, self.contracts, self.clock)
        self.gate = OverlapGate()  # live appends and backfills of a stream, one at a time (ib_overlap)
        self.subs = Subscriptions(config, self._ids, self.gaps.refused)
        pacer = Pacer(config.historical_requests_per_window, config.historical_window_seconds)
        self.history = HistoryRequests(
            self._ids, pacer, timeout=config.historical_timeout_seconds, pacing_wait=config.pacing_retry_seconds
        )
        self._conn: IbConnection | None = None
        self._closed = asyncio.Event()
        self._next_id = asyncio.Event()
        self._events: asyncio.Queue[IbEvent] = asyncio.Queue()
        self._app: StreamingApp | None = None
        self._last_data: dict[int, int] = {}  # con_id -> receive time of its latest callback (or subscribe time)
        self._stale: set[int] = set()  # con_ids resubscribed by the watchdog, silent since
        self._offline = False  # TWS lost IB (1100, 2110) and has not got it back (1101, 1102): acknowledges nothing

    @property
    def refused(self) -> dict[int, dict[str, str]]:
        """con_id -> tick type (or "contract") -> why it is not subscribed."""
        return self.subs.refused

    # --- TickSource ----------------------------------------------------------------------------------------------

    async def run(self, app: StreamingApp) -> None:
        """Connect, subscribe and store ticks until cancelled, reconnecting whenever the connection drops."""
        self._app = app
        await self.gaps.start(app.store)
        backfiller = Backfiller(
            app.store, self.fetch_history, max_seconds=self.config.backfill_max_seconds, gate=self.gate
        )
        tasks = [
            asyncio.create_task(self._consume(), name="ib-events"),
            asyncio.create_task(self.subs.run_outbox(), name="ib-outbox"),
            asyncio.create_task(
                self.gaps.backfill_forever(backfiller, lambda: self.history.conn is not None), name="ib-backfill"
            ),
        ]
        try:
            await self._connection_loop()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=5)
            if self._conn is not None:
                self._conn.close()
            self.gaps.lost(self.gaps.streams, GapReason.DISCONNECT, "IB source stopped")
            await self.gaps.settled()

    def status(self) -> dict[str, Any]:
        """Connection, subscriptions per contract and tick type (method tbt|mkt|depth), refusals, backfills."""
        conn = self._conn
        return {
            "connected": conn is not None and conn.isConnected() and not self._closed.is_set(),
            "port": conn.port if conn is not None else None,
            "subscriptions": self.subs.by_method(),
            "not_subscribed": {con_id: dict(why) for con_id, why in self.refused.items()},
            "reconnects": self.reconnects,
            "stale": sorted(self._stale),
            "uncovered": len(self.gaps.uncovered()),
            "live_duplicates_dropped": self.gate.dropped,
            "historical_requests": self.history.requests,
            "pacing_violations": self.history.pacing_violations,
            "backfills": [r.describe() for r in self.gaps.backfills],
        }

    # --- connection ----------------------------------------------------------------------------------------------

    async def _connection_loop(self) -> None:
        attempt, ever_connected = 0, False
        while True:
            if await self._connect():
                if ever_connected:
                    self.reconnects += 1
                ever_connected, attempt = True, 0
                await self._session()
                self.gaps.lost(self.gaps.streams, GapReason.DISCONNECT, "IB connection closed")
            elif not ever_connected:  # nothing recorded since start-up: a gap from then until IB answers
                where = f"{self.config.host} ports {', '.join(map(str, self.config.ports))}"
                self.gaps.lost(self.gaps.streams, GapReason.BROKER_UNREACHABLE, f"IB not reachable at {where}")
            delay = min(self.config.reconnect_max_seconds, self.config.reconnect_initial_seconds * 2**attempt)
            attempt += 1
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))

    async def _connect(self) -> bool:
        loop = asyncio.get_running_loop()
        for port in self.config.ports:
            conn = IbConnection(loop, self._events.put_nowait, self.clock)
            self._closed.clear()
            self._next_id.clear()
            self._conn = conn
            timeout = self.config.connect_timeout_seconds
            if await conn.open(self.config.host, port, self.config.client_id, timeout):
                try:
                    await asyncio.wait_for(self._next_id.wait(), timeout)
                    return True
                except TimeoutError:
                    log.warning("IB at %s:%d sent no nextValidId within %.1fs", self.config.host, port, timeout)
                    conn.close()
            log.info("IB not reachable at %s:%d", self.config.host, port)
        self._conn = None
        return False

    async def _session(self) -> None:
        """Resolve, subscribe, then wait until the connection closes."""
        log.info("connected to IB at %s:%s", self.config.host, self._conn.port if self._conn else "?")
        self.subs.reset(self._conn)
        self.history.conn = self._conn
        self._offline = False
        await self._resolve_all()
        self.subs.subscribe_all(self.contracts)  # each stream's gap ends when TWS acknowledges it, or data flows
        now = self.clock.now_ns()
        self._last_data = {c.con_id: now for c in self.contracts}
        self._stale.clear()
        watchdog = asyncio.create_task(self._watchdog(), name="ib-watchdog")
        try:
            await self._closed.wait()
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            self.history.conn = None
            self.history.fail_all("the IB connection closed")
        self.subs.reset(None)

    async def _watchdog(self) -> None:
        """Resubscribe a contract silent for stale_after_seconds in an open session; then drop the connection."""
        stale_ns = int(self.config.stale_after_seconds * NS_PER_SECOND)
        while True:
            await asyncio.sleep(min(1.0, self.config.stale_after_seconds / 4))
            self.watchdog_checks += 1
            now = self.clock.now_ns()
            for contract in self.contracts:
                con_id = contract.con_id
                if not self.subs.subscribed(con_id) or now - self._last_data.get(con_id, now) < stale_ns:
                    continue
                try:
                    is_open = MarketSessions.for_contract(contract).is_open_at(now, "extended")
                except Exception:  # an unknown calendar must not stop the watchdog: treat the market as open
                    log.exception("IB watchdog: no sessions for %s (calendar %s)", contract.symbol, contract.calendar)
                    is_open = True
                if not is_open:
                    continue
                silent = f"no data from {contract.symbol} ({con_id}) for {self.config.stale_after_seconds:g}s"
                streams = [StreamKey(con_id, t) for t in contract.tick_types]
                self.gaps.lost(streams, GapReason.STALE_FEED, f"stale feed: {silent}", data_only=True)
                if con_id not in self._stale:
                    log.warning("IB stale feed: %s while its session is open: resubscribing", silent)
                    self._stale.add(con_id)
                    self._last_data[con_id] = now
                    self.subs.resubscribe(self.contracts, con_id)
                    continue
                log.error("IB stale feed: %s after a resubscribe: reconnecting", silent)
                if self._conn is not None:
                    self._conn.close()
                return

    async def _resolve_all(self) -> None:
        loop = asyncio.get_running_loop()
        pending: dict[int, asyncio.Future[Any]] = {}
        for contract in self.contracts:
            pending[contract.con_id] = loop.create_future()
            self.subs.details(contract, pending[contract.con_id])
        timeout = self.config.connect_timeout_seconds
        for contract in self.contracts:
            try:
                resolved = await asyncio.wait_for(pending[contract.con_id], timeout)
            except TimeoutError:
                resolved = None
                self.subs.refuse(contract, "contract", f"no contract details within {timeout}s")
            if resolved is not None:
                self.subs.resolved[contract.con_id] = resolved
        self.subs.drop_details()

    # --- history ---------------------------------------------------------------------------------------------------

    async def fetch_history(self, contract: Contract, start_ns: int, what: str) -> list[Any]:
        """Up to 1,000 historical ticks of `contract` from `start_ns` (a Backfiller's fetch)."""
        ib = self.subs.resolved.get(contract.con_id) or ib_contract(contract)
        return await self.history.fetch(ib, start_ns, what)

    # --- events (event loop) -------------------------------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            try:
                first = await asyncio.wait_for(self._events.get(), FLUSH_AFTER_SECONDS)
            except TimeoutError:
                await self._publish(self._flush_assemblers())
                continue
            events = [first]
            while not self._events.empty():
                events.append(self._events.get_nowait())
            batch: StreamBatch = {}
            for event in events:
                try:
                    self._handle(event, batch)
                except Exception:
                    log.exception("IB event %s%r could not be handled", event.name, event.args)
            await self._publish(batch)

    def _handle(self, event: IbEvent, batch: StreamBatch) -> None:
        if event.connection is not self._conn:
            return  # a late callback of an earlier connection
        handler = _EVENTS.get(event.name)
        if event.name in DATA_EVENTS and (request := self.subs.requests.get(event.args[0])) is not None:
            con_id = request.contract.con_id
            self._last_data[con_id] = event.recv_ns
            self._stale.discard(con_id)
            if handler is not None:
                handler(self, event, batch)
            self.gaps.flowing(con_id, request.tick_types, event.recv_ns)  # e.g. a quote on a reqMktData: trades too
            return
        if handler is not None:
            handler(self, event, batch)

    async def _publish(self, batch: StreamBatch) -> None:
        assert self._app is not None
        for (con_id, tick_type, source), ticks in batch.items():
            stream = StreamKey(con_id, tick_type)
            async with self.gate.lock(stream):  # not while a backfill reads and appends this stream (ib_overlap)
                fresh = self.gate.live(stream, ticks)  # the others are stored already, by a backfill
                try:
                    if fresh:
                        await self._app.publish(con_id, tick_type, fresh, source)
                except Exception:
                    log.exception("IB ticks for %d %s could not be stored (%d ticks)", con_id, tick_type, len(fresh))
                else:
                    self.gaps.stored(stream, max(t["ts"] for t in ticks))

    def _flush_assemblers(self) -> StreamBatch:
        batch: StreamBatch = {}
        now = self.clock.now_ns()
        for request in self.subs.requests.values():
            if request.assembler is not None:
                self._add_pairs(batch, request, request.assembler.flush(now))
        return batch

    def _add(self, batch: StreamBatch, request: Request, tick_type: TickType, tick: dict[str, Any]) -> None:
        if tick_type in request.tick_types:
            con_id, ts = request.contract.con_id, tick["ts"]
            batch.setdefault((con_id, tick_type, tick["source"]), []).append(tick)
            # A gap ends after the start of the first tick's second when IB stamped it (whole seconds: the rest
            # of that second may be missing), at the tick when it was stamped on receipt.
            self.gaps.received(StreamKey(con_id, tick_type), ts + 1 if tick["source"] == parse.SOURCE_TBT else ts)

    def _add_pairs(self, batch: StreamBatch, request: Request, pairs: list[tuple[TickType, dict[str, Any]]]) -> None:
        for tick_type, tick in pairs:
            self._add(batch, request, tick_type, tick)

    # One handler per callback; `args` are ibapi's, in its order.

    def _on_closed(self, event: IbEvent, batch: StreamBatch) -> None:
        self._closed.set()

    def _on_next_valid_id(self, event: IbEvent, batch: StreamBatch) -> None:
        self._next_id.set()

    def _on_current_time(self, event: IbEvent, batch: StreamBatch) -> None:
        requests = self.subs.acknowledged()  # the subscriptions sent before this barrier reached TWS
        if self._offline:
            return  # TWS took them, but it has no connection to IB: no data flows yet
        self.gaps.acknowledged([StreamKey(r.contract.con_id, t) for r in requests for t in r.tick_types], event.recv_ns)

    def _on_contract_details(self, event: IbEvent, batch: StreamBatch) -> None:
        request = self.subs.requests.get(event.args[0])
        if request is not None and request.resolved is not None and not request.resolved.done():
            request.resolved.set_result(event.args[1])

    def _on_contract_details_end(self, event: IbEvent, batch: StreamBatch) -> None:
        request = self.subs.requests.get(event.args[0])
        if request is not None and request.resolved is not None and not request.resolved.done():
            request.resolved.set_result(None)
            self.subs.refuse(request.contract, "contract", "reqContractDetails returned no contract")

    def _on_tbt_bid_ask(self, event: IbEvent, batch: StreamBatch) -> None:
        req_id, *args = event.args
        if (request := self.subs.requests.get(req_id)) is not None:
            self._add(batch, request, TickType.BID_ASK, parse.bid_ask_from_tbt(*args))

    def _on_tbt_trade(self, event: IbEvent, batch: StreamBatch) -> None:
        req_id, *args = event.args
        if (request := self.subs.requests.get(req_id)) is not None:
            self._add(batch, request, *parse.trade_from_tbt(*args))

    def _on_tbt_mid_point(self, event: IbEvent, batch: StreamBatch) -> None:
        req_id, *args = event.args
        if (request := self.subs.requests.get(req_id)) is not None:
            self._add(batch, request, TickType.MID_POINT, parse.midpoint_from_tbt(*args))

    def _on_tick_price(self, event: IbEvent, batch: StreamBatch) -> None:
        req_id, tick_type, price = event.args
        request = self.subs.requests.get(req_id)
        if request is not None and request.assembler is not None:
            self._add_pairs(batch, request, request.assembler.on_price(tick_type, price, event.recv_ns))

    def _on_tick_size(self, event: IbEvent, batch: StreamBatch) -> None:
        req_id, tick_type, size = event.args
        request = self.subs.requests.get(req_id)
        if request is not None and request.assembler is not None:
            self._add_pairs(batch, request, request.assembler.on_size(tick_type, size, event.recv_ns))

    def _on_depth(self, event: IbEvent, batch: StreamBatch) -> None:
        req_id, position, operation, side, price, size, market_maker = event.args
        if (request := self.subs.requests.get(req_id)) is not None:
            tick = parse.depth_from_mkt_depth(position, operation, side, price, size, event.recv_ns, market_maker)
            self._add(batch, request, TickType.DEPTH, tick)

    def _on_historical(self, event: IbEvent, batch: StreamBatch) -> None:
        self.history.on_ticks(*event.args)

    def _on_error(self, event: IbEvent, batch: StreamBatch) -> None:
        req_id, code, message = event.args
        rule = classify(code, message)
        if req_id >= 0 and self.history.owns(req_id):
            log.log(rule.severity.level, format_error(code, message, req_id, "reqHistoricalTicks"))
            self.history.on_error(req_id, code, message, rule.action)
            return
        request = self.subs.requests.get(req_id) if req_id >= 0 else None
        context = f"{request.method} {request.contract.symbol}" if request is not None else ""
        log.log(rule.severity.level, format_error(code, message, req_id, context))
        handler = _ACTIONS.get(rule.action)
        if handler is not None:
            handler(self, code, message, request, req_id)

    # Error actions: (code, message, the request it concerns or None, reqId).

    def _gap(self, code: int, message: str, request: Request | None, req_id: int) -> None:
        self._offline = True
        self.gaps.lost(
            self.gaps.streams, GapReason.DISCONNECT, f"IB {code}: {classify(code, message).description}", code
        )

    def _restored(self, code: int, message: str, request: Request | None, req_id: int) -> None:
        # Every subscription is cancelled and made again: until TWS has the new ones, data may be missing.
        self._offline = False
        self.gaps.lost(
            self.gaps.streams, GapReason.DISCONNECT, f"IB {code}: {classify(code, message).description}", code
        )
        self.subs.resubscribe(self.contracts)

    def _refused(self, code: int, message: str, request: Request | None, req_id: int) -> None:
        if request is None:
            return
        if request.method == "details":
            if request.resolved is not None and not request.resolved.done():
                request.resolved.set_result(None)
            self.subs.refuse(request.contract, "contract", f"IB {code}: {message}")
            return
        self.subs.cancel(req_id)
        if request.method == "tbt":
            streams = [StreamKey(request.contract.con_id, t) for t in request.tick_types]
            why = f"tick-by-tick refused: IB {code}: {message}; falling back to reqMktData"
            self.gaps.lost(streams, GapReason.SUBSCRIPTION_REFUSED, why, code)
            self.subs.fall_back(request.contract, request.tick_types, f"tick-by-tick refused: IB {code}")
        else:
            for tick_type in request.tick_types:
                self.subs.refuse(request.contract, tick_type, f"{request.method} refused: IB {code}: {message}")

    def _disconnected(self, code: int, message: str, request: Request | None, req_id: int) -> None:
        if self._conn is not None:
            self._conn.close()


_EVENTS: Final[dict[str, Callable[[IbSource, IbEvent, StreamBatch], None]]] = {
    "closed": IbSource._on_closed,
    "next_valid_id": IbSource._on_next_valid_id,
    "current_time": IbSource._on_current_time,
    "contract_details": IbSource._on_contract_details,
    "contract_details_end": IbSource._on_contract_details_end,
    "tbt_bid_ask": IbSource._on_tbt_bid_ask,
    "tbt_trade": IbSource._on_tbt_trade,
    "tbt_mid_point": IbSource._on_tbt_mid_point,
    "tick_price": IbSource._on_tick_price,
    "tick_size": IbSource._on_tick_size,
    "depth": IbSource._on_depth,
    "historical": IbSource._on_historical,
    "error": IbSource._on_error,
}
# What each ib_errors Action does; actions not listed (farm up/down, delayed data, depth reset 317) are only
# logged by _on_error; pacing and historical errors on a historical request go to HistoryRequests.
_ACTIONS: Final[dict[Action, Callable[[IbSource, int, str, Request | None, int], None]]] = {
    Action.MARK_GAP: IbSource._gap,
    Action.RESUBSCRIBE: IbSource._restored,
    Action.SUBSCRIPTION_REFUSED: IbSource._refused,
    Action.SUBSCRIPTION_LOST: IbSource._refused,
    Action.CONTRACT_UNKNOWN: IbSource._refused,
    Action.DISCONNECTED: IbSource._disconnected,
}
